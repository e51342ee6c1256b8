"""``textcl push RUN_OR_MODEL_DIR --repo-id ORG/NAME``: publish a model on the Hugging Face hub."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from textcl.errors import InputError, NetworkError
from textcl.model_card import MODEL_PATH_PLACEHOLDER

HELP = "upload a trained model (a run's best/ by default) to the Hugging Face hub"
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
RUN_SUBFOLDERS: tuple[str, ...] = ("best", "final", "model")
"""Tried in order when the folder given is a run (or checkpoint) folder, not a model."""
IGNORE_PATTERNS: list[str] = [".*", "**/.*", "*.tmp-*"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("push", help=HELP, description=HELP + ".")
    p.add_argument(
        "folder",
        metavar="RUN_OR_MODEL_DIR",
        help="a model folder (written by SentenceEncoder.save: best/, final/, a checkpoint's "
        "model/) or a run folder, whose best/ (else final/) is uploaded",
    )
    p.add_argument("--repo-id", required=True, metavar="ORG/NAME", help="hub repository id")
    p.add_argument(
        "--private", action="store_true", help="create the repository as private (default: public)"
    )
    p.add_argument(
        "--revision",
        default=None,
        metavar="REV",
        help="branch to upload to; created from main if missing (default: main)",
    )
    p.add_argument(
        "--commit-message",
        default=None,
        help="commit message (default: 'Upload textcl model from FOLDER')",
    )
    p.set_defaults(func=run)


def is_model_folder(path: Path) -> bool:
    """A transformers model folder (``config.json``) with weights or a textcl config."""
    if not (path / "config.json").is_file():
        return False
    weights = list(path.glob("*.safetensors")) + list(path.glob("pytorch_model*.bin"))
    return bool(weights) or (path / "textcl_config.json").is_file()


def resolve_model_folder(path: str | Path) -> Path:
    """The model folder to upload for ``path``: itself if it is a model folder, else its
    ``best/``, ``final/`` or ``model/`` (checkpoint) subfolder, first found."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise InputError(f"{root}: no such folder")
    if is_model_folder(root):
        return root
    for name in RUN_SUBFOLDERS:
        if is_model_folder(root / name):
            return root / name
    raise InputError(
        f"{root} is not a model folder (no config.json with weights) and has no "
        f"{'/, '.join(RUN_SUBFOLDERS)}/ model folder inside; give a folder written by "
        "SentenceEncoder.save or a textcl run folder"
    )


def _network_errors() -> tuple[type[BaseException], ...]:
    """What the hub client raises when the hub cannot be reached or refuses a request:
    ``OSError`` (``requests`` and ``huggingface_hub`` errors derive from it) and, when
    installed, ``httpx.HTTPError``."""
    errors: list[type[BaseException]] = [OSError]
    try:
        import httpx  # optional: the transport of recent huggingface_hub versions
    except ImportError:
        pass
    else:
        errors.append(httpx.HTTPError)
    return tuple(errors)


@contextlib.contextmanager
def _hub_step(endpoint: str, what: str) -> Iterator[None]:
    """Turn a network or hub failure inside the block into one :class:`NetworkError` line
    naming the hub and the step that failed."""
    try:
        yield
    except _network_errors() as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise NetworkError(
            f"{endpoint}: could not {what} ({type(e).__name__}: {reason:.300}); check the "
            "network connection, HF_ENDPOINT and the token's write access, then run "
            "`textcl push` again"
        ) from e


def push(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Create ``repo_id`` if needed and upload the model folder; return the commit URL."""
    if not REPO_ID.match(repo_id):
        raise InputError(f"--repo-id {repo_id!r}: expected ORG/NAME (e.g. my-org/my-encoder)")
    model_dir = resolve_model_folder(folder)
    try:
        import huggingface_hub
    except ImportError as e:
        raise InputError("textcl push needs huggingface_hub: pip install 'textcl[hub]'") from e
    token = huggingface_hub.get_token()
    if not token:
        raise InputError(
            "no Hugging Face token: set HF_TOKEN or run `hf auth login` "
            "(a token with write access) before `textcl push`"
        )
    api = huggingface_hub.HfApi(token=token)
    endpoint = getattr(api, "endpoint", None)
    if not isinstance(endpoint, str):
        endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    with _hub_step(endpoint, f"create the repository {repo_id}"):
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision:
        with _hub_step(endpoint, f"create the branch {revision!r} of {repo_id}"):
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
    message = commit_message or f"Upload textcl model from {model_dir.name}/"
    card = model_dir / "README.md"
    card_text = card.read_text(encoding="utf-8") if card.is_file() else ""
    patch_card = MODEL_PATH_PLACEHOLDER in card_text
    with _hub_step(endpoint, f"upload {model_dir} to {repo_id}"):
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(model_dir),
            repo_type="model",
            revision=revision,
            commit_message=message,
            ignore_patterns=IGNORE_PATTERNS + (["README.md"] if patch_card else []),
        )
    if patch_card:
        # The card's snippets load the model by its hub id.
        with _hub_step(endpoint, f"upload the model card to {repo_id}"):
            info = api.upload_file(
                path_or_fileobj=card_text.replace(MODEL_PATH_PLACEHOLDER, repo_id).encode("utf-8"),
                path_in_repo="README.md",
                repo_id=repo_id,
                repo_type="model",
                revision=revision,
                commit_message=f"{message} (model card)",
            )
    return str(getattr(info, "commit_url", None) or info)


def run(args: argparse.Namespace) -> int:
    url = push(
        args.folder,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        commit_message=args.commit_message,
    )
    print(f"pushed {resolve_model_folder(args.folder)} to {args.repo_id}: {url}")
    return 0
