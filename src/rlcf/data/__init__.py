"""Data: reading rows, prompts and preference pairs from files and hub datasets, checked row by row (`loading`),
and turning them into padded token batches (`tokens`)."""

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
from .tokens import encode_prompt, encode_response, left_pad, right_pad, tokenize_responses, use_chat_template

__all__ = ["DataError", "Prompt", "check_length", "encode_prompt", "encode_response", "left_pad", "load_prompts",
           "load_records", "load_rows", "parse_columns", "prepare_prompts", "right_pad", "tokenize_prompts",
           "tokenize_responses", "use_chat_template"]
