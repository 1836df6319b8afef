"""Reading a YAML config file a user wrote, as plain data, or one clear line saying what is wrong with it.

Standard library and PyYAML only (a ground-floor module: it imports nothing from rlcf). On top of yaml.safe_load (which builds plain
values only, never Python objects, and runs nothing), `load_yaml_file` refuses before parsing: a folder, a device
or pipe, a file over MAX_YAML_BYTES, a file that is not UTF-8 text; and while parsing: the same key twice in one
mapping, anchors and aliases (so an alias bomb cannot expand), nesting deeper than MAX_YAML_DEPTH, tags that are not
plain YAML (e.g. !!python/object/apply:...), and values the safe constructors choke on (a date with month 13, a
number with thousands of digits). Every message names the file (and the line where there is one), is one line,
and quotes at most QUOTE_CHARS characters of the file.
"""

from __future__ import annotations

import os
import stat

import yaml

MAX_YAML_BYTES = 1 << 20
"""A config file is a few KiB; anything over 1 MiB is the wrong file (a data set, a checkpoint, /dev/zero)."""
MAX_YAML_DEPTH = 50
"""Configs nest a few levels; deeper nesting is refused before Python's recursion limit turns it into a crash."""
QUOTE_CHARS = 200
"""The most characters of the file, or of any value in it, that an error message quotes."""


class YAMLFileError(ValueError):
    """A YAML file that cannot be read as a config; the message names the file, the line and what to do."""


def quote(text: str, limit: int = QUOTE_CHARS) -> str:
    """repr() of at most `limit` characters of `text` ('...' marks a cut)."""
    text = str(text)
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def shorten(message: str, limit: int = 3 * QUOTE_CHARS) -> str:
    """`message` on one line and at most about `limit` characters: its start (the file, the field) and its end
    (what to do) are kept, the middle is cut."""
    message = " ".join(str(message).split())
    if len(message) <= limit:
        return message
    head, tail = limit * 2 // 3, limit // 3
    return f"{message[:head]} [... {len(message) - head - tail} characters cut ...] {message[-tail:]}"


class _Refused(yaml.MarkedYAMLError):
    """Raised by the loader below; `problem` is already the sentence to show."""


def _line(mark) -> int:
    return mark.line + 1


class _ConfigLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses anchors, aliases, deep nesting, duplicate keys and non-plain tags."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            sign = "*" if isinstance(event, yaml.AliasEvent) else "&"
            raise _Refused(problem=f"{'alias' if sign == '*' else 'anchor'} {sign}{event.anchor[:QUOTE_CHARS]}: "
                                   "anchors (&name) and aliases (*name) are not allowed in config files; "
                                   "write the value out in full", problem_mark=event.start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _Refused(problem=f"nested deeper than {MAX_YAML_DEPTH} levels; a config file needs a few",
                               problem_mark=event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue  # merge keys flatten later; a non-scalar key is refused by the base class
                key = self.construct_object(key_node)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:
                    continue
                if first is not key_node:
                    raise _Refused(problem=f"the key {quote(key)} appears twice in one mapping, at line "
                                           f"{_line(first.start_mark)} and line {_line(key_node.start_mark)}; "
                                           "keep one (YAML would silently keep the last)",
                                   problem_mark=key_node.start_mark)
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as e:  # e.g. `2024-13-45` as a date, `!!float abc`, 5000 digits
            reason = str(e).split(";")[0]
            value = node.value if isinstance(node, yaml.ScalarNode) else f"a {node.id}"
            raise _Refused(problem=f"cannot read {quote(value, 60)} as {node.tag.rpartition(':')[2]} "
                                   f"({reason[:QUOTE_CHARS]})", problem_mark=node.start_mark) from None

    def construct_undefined(self, node):
        tag = node.tag.replace("tag:yaml.org,2002:", "!!")
        raise _Refused(problem=f"the tag {quote(tag, 80)} is not allowed: config files hold plain values "
                               "(text, numbers, true/false, lists, mappings); nothing in them is run or imported",
                       problem_mark=node.start_mark)


_ConfigLoader.add_constructor(None, _ConfigLoader.construct_undefined)


def _describe(e: yaml.YAMLError) -> str:
    """A YAML error as ', line L, column C: problem' (refused by the loader) or ' is not valid YAML: line L, column
    C: problem (context at line M)' (a syntax error), without the file's text."""
    if not isinstance(e, yaml.MarkedYAMLError):
        return f" is not valid YAML: {shorten(e, QUOTE_CHARS)}"
    where = f"line {_line(e.problem_mark)}, column {e.problem_mark.column + 1}: " if e.problem_mark else ""
    problem = shorten(e.problem or "", QUOTE_CHARS)
    if isinstance(e, _Refused):
        return f", {where}{problem}"
    context = ""
    if e.context:
        at = f" at line {_line(e.context_mark)}" if e.context_mark else ""
        context = f" ({shorten(e.context, QUOTE_CHARS)}{at})"
    return f" is not valid YAML: {where}{problem}{context}"


def read_yaml_text(path: str, what: str = "config file") -> str:
    """The file's text, or a YAMLFileError: missing, a folder, not a regular file, over MAX_YAML_BYTES, binary or
    not UTF-8. A UTF-8 byte-order mark is dropped."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise YAMLFileError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise YAMLFileError(f"{what} {path} cannot be read: {e.strerror or e}") from None
    if stat.S_ISDIR(info.st_mode):
        raise YAMLFileError(f"{what} {path} is a folder, not a YAML file; point --config at a .yaml file")
    if not stat.S_ISREG(info.st_mode):
        kind = ("a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else
                "a pipe" if stat.S_ISFIFO(info.st_mode) else "a socket" if stat.S_ISSOCK(info.st_mode) else "special")
        raise YAMLFileError(f"{what} {path} is {kind}, not a regular file; point --config at a .yaml file")
    if info.st_size > MAX_YAML_BYTES:
        raise YAMLFileError(f"{what} {path} is {info.st_size / 2**20:.1f} MiB; config files are at most "
                            f"{MAX_YAML_BYTES >> 20} MiB (is it the right file?)")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_YAML_BYTES + 1)  # a file that grew, or a /proc file reporting size 0
    except OSError as e:
        raise YAMLFileError(f"{what} {path} cannot be read: {e.strerror or e}") from None
    if len(data) > MAX_YAML_BYTES:
        raise YAMLFileError(f"{what} {path} is over {MAX_YAML_BYTES >> 20} MiB; config files are a few KiB "
                            "(is it the right file?)")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise YAMLFileError(f"{what} {path} is UTF-16 text; save it as UTF-8")
    nul = data.find(b"\x00")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise YAMLFileError(f"{what} {path} holds a NUL byte at offset {nul} (line {line}): a binary file, not "
                            "YAML text; point --config at a .yaml file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise YAMLFileError(f"{what} {path} is not UTF-8: byte 0x{data[e.start]:02X} at offset {e.start} "
                            f"(line {line}) cannot be decoded; save it as UTF-8") from None


def load_yaml_file(path: str, what: str = "config file"):
    """The plain data in a YAML file (None for an empty or comments-only file); any problem is a YAMLFileError
    naming the file, and the line where there is one."""
    text = read_yaml_text(path, what)
    loader = _ConfigLoader(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as e:
        raise YAMLFileError(f"{what} {path}{_describe(e)}") from None
    except RecursionError:  # not expected past the depth bound; a crash here would be a traceback
        raise YAMLFileError(f"{what} {path} is nested too deeply to read; a config file needs a few levels") from None
    finally:
        loader.dispose()
