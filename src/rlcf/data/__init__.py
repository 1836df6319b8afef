"""Data: reading rows, prompts and preference pairs from files and hub datasets, checked row by row (`loading`;
pairs in every common shape: `pairs`), and turning them into padded token batches (`tokens`)."""

from ..errors import DataError
from .loading import (
           Prompt,
           check_length,
           load_prompts,
           load_records,
           load_rows,
           parse_columns,
           prepare_prompts,
           tokenize_prompts,
)
from .pairs import SHAPES, Pairs, chat_text, load_pairs
from .tokens import (
           encode_chat_response,
           encode_prompt,
           encode_response,
           left_pad,
           right_pad,
           tokenize_responses,
           use_chat_template,
)

__all__ = ["SHAPES", "DataError", "Pairs", "Prompt", "chat_text", "check_length", "encode_chat_response",
           "encode_prompt", "encode_response", "left_pad", "load_pairs", "load_prompts", "load_records", "load_rows",
           "parse_columns", "prepare_prompts", "right_pad", "tokenize_prompts", "tokenize_responses",
           "use_chat_template"]
