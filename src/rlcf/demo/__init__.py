"""Built-in demo task of rlcf: positive, upbeat, short writing (see ``rlcf.demo.task``)."""
