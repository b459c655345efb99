"""Where a model is given from: a local checkpoint directory or a Hub id, checked before transformers tries it.

Given a path that does not exist, transformers answers "Repo id must be in the form 'repo_name' or
'namespace/repo_name'"; given a file, "... is not a valid JSON file" (it reads the file as ``config.json``). t3d-trl
checks the name first (:func:`check_model_location`) and says which of the two it is and what is expected.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["MODEL_FILES", "TOKENIZER_FILES", "check_model_location"]

_EXPECTED = (
    "a directory holding a saved model (its config.json, from save_pretrained) or a Hub id such as "
    "'JetLM/SDAR-1.7B-Chat'"
)


def _is_hub_id(name: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


#: the files one of which a saved model's directory holds (a model, or a PEFT adapter on its base)
MODEL_FILES = ("config.json", "adapter_config.json")
#: the files one of which a saved tokenizer's directory holds (without any, ``AutoTokenizer`` silently builds a
#: tokenizer with an empty vocabulary from the model's config)
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.json", "vocab.txt", "tokenizer.model")


def check_model_location(
    name: str | os.PathLike, argument: str = "model", required_files: tuple[str, ...] | None = MODEL_FILES
) -> None:
    """Refuse a model location that is neither a saved model's directory nor a well-formed Hub id.

    A name that is a well-formed Hub id and no local directory is left to transformers (it looks it up on the Hub,
    or in the cache when offline, and says when it is not there).

    Args:
        name: the model's directory or Hub id.
        argument: how the message names the argument (``"model"``, ``"--model_name_or_path"``...).
        required_files: a local directory must hold one of them (:data:`MODEL_FILES`, :data:`TOKENIZER_FILES`, or
            ``None``: any directory).

    Raises:
        ValueError: for an empty name, a file, a directory without any of ``required_files``, or a path that does
            not exist and is no Hub id.
    """
    text = os.fspath(name)
    if not text.strip():
        raise ValueError(f"{argument} is empty; give {_EXPECTED}.")
    path = Path(text).expanduser()
    if path.is_file():
        raise ValueError(f"{argument}={text!r} is a file; give {_EXPECTED}.")
    if path.is_dir():
        if required_files and not any((path / file).is_file() for file in required_files):
            what = "tokenizer" if required_files == TOKENIZER_FILES else "model"
            raise ValueError(
                f"{argument}={text!r} is a directory without {' or '.join(required_files)}, so not a saved {what}; "
                f"give {_EXPECTED}."
            )
        return
    if not _is_hub_id(text):
        raise ValueError(f"{argument}={text!r} does not exist on this machine and is not a Hub id; give {_EXPECTED}.")
