"""`textcl push` with the Hugging Face hub client mocked (no network)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

from textcl import SentenceEncoder
from textcl.cli import main
from textcl.model_card import MODEL_PATH_PLACEHOLDER

hub = pytest.importorskip("huggingface_hub")


class FakeApi:
    calls: ClassVar[list[tuple[str, tuple[Any, ...], dict[str, Any]]]] = []

    def __init__(self, token: str | None = None) -> None:
        FakeApi.calls.append(("init", (), {"token": token}))

    def __getattr__(self, name: str) -> Any:
        def record(*args: Any, **kwargs: Any) -> Any:
            if name == "upload_folder":  # what would be uploaded, read now (the folder is real)
                kwargs["files"] = sorted(
                    p.relative_to(kwargs["folder_path"]).as_posix()
                    for p in Path(kwargs["folder_path"]).rglob("*")
                    if p.is_file()
                )
            FakeApi.calls.append((name, args, kwargs))
            return SimpleNamespace(commit_url=f"https://hf.example/{name}")

        return record


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> type[FakeApi]:
    FakeApi.calls = []
    monkeypatch.setattr(hub, "HfApi", FakeApi)
    monkeypatch.setattr(hub, "get_token", lambda: "hf_test_token")
    return FakeApi


@pytest.fixture
def run_dir(tiny_encoder: SentenceEncoder, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    tiny_encoder.save(run / "best")
    tiny_encoder.save(run / "final")
    (run / "config.json").write_text("{}")  # a run's own config: not a model
    return run


def _calls(fake: type[FakeApi], name: str) -> list[dict[str, Any]]:
    return [kw for n, _, kw in fake.calls if n == name]


def test_push_uploads_best_of_a_run(
    fake_hub: type[FakeApi], run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["push", str(run_dir), "--repo-id", "me/tiny", "--private", "--commit-message", "v1"])
    assert rc == 0
    assert fake_hub.calls[0] == ("init", (), {"token": "hf_test_token"})
    create = [(a, kw) for n, a, kw in fake_hub.calls if n == "create_repo"]
    assert create == [(("me/tiny",), {"private": True, "exist_ok": True, "repo_type": "model"})]
    assert not _calls(fake_hub, "create_branch")
    (upload,) = _calls(fake_hub, "upload_folder")
    assert Path(upload["folder_path"]) == run_dir / "best"
    assert upload["repo_id"] == "me/tiny" and upload["revision"] is None
    assert upload["commit_message"] == "v1"
    assert {"modules.json", "textcl_config.json", "model.safetensors"} <= set(upload["files"])
    # The card's snippets get the hub id instead of the local placeholder.
    (card,) = _calls(fake_hub, "upload_file")
    assert card["path_in_repo"] == "README.md" and "README.md" in upload["ignore_patterns"]
    text = card["path_or_fileobj"].decode()
    assert "SentenceEncoder.load('me/tiny')" in text and MODEL_PATH_PLACEHOLDER not in text
    assert "me/tiny" in capsys.readouterr().out


def test_push_falls_back_to_final_and_takes_model_folders(
    fake_hub: type[FakeApi], run_dir: Path, tmp_path: Path
) -> None:
    import shutil

    shutil.rmtree(run_dir / "best")
    assert main(["push", str(run_dir), "--repo-id", "me/tiny", "--revision", "dev"]) == 0
    (upload,) = _calls(fake_hub, "upload_folder")
    assert Path(upload["folder_path"]) == run_dir / "final" and upload["revision"] == "dev"
    (branch,) = _calls(fake_hub, "create_branch")
    assert branch["branch"] == "dev" and branch["exist_ok"] is True
    # A checkpoint folder: its model/ subfolder; a model folder: itself.
    ckpt = tmp_path / "ckpt"
    shutil.copytree(run_dir / "final", ckpt / "model")
    FakeApi.calls = []
    assert main(["push", str(ckpt), "--repo-id", "me/tiny"]) == 0
    assert Path(_calls(fake_hub, "upload_folder")[0]["folder_path"]) == ckpt / "model"
    FakeApi.calls = []
    assert main(["push", str(run_dir / "final"), "--repo-id", "me/tiny"]) == 0
    assert Path(_calls(fake_hub, "upload_folder")[0]["folder_path"]) == run_dir / "final"


def test_push_errors(
    fake_hub: type[FakeApi],
    run_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["push", str(tmp_path / "empty"), "--repo-id", "me/x"]) == 2
    assert "is not a model folder" in capsys.readouterr().err
    assert main(["push", str(tmp_path / "missing"), "--repo-id", "me/x"]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["push", str(run_dir), "--repo-id", "not a repo"]) == 2
    assert "expected ORG/NAME" in capsys.readouterr().err
    monkeypatch.setattr(hub, "get_token", lambda: None)
    assert main(["push", str(run_dir), "--repo-id", "me/x"]) == 2
    assert "no Hugging Face token" in capsys.readouterr().err
    assert not [c for c in fake_hub.calls if c[0] != "init"]  # nothing was uploaded


def test_push_help_lists_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["push", "--help"])
    out = capsys.readouterr().out
    for flag in ("--repo-id", "--private", "--revision", "--commit-message", "RUN_OR_MODEL_DIR"):
        assert flag in out
