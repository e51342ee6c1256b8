"""`textcl push` with the Hugging Face hub client mocked (no network)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest

from textcl import SentenceEncoder
from textcl.cli import main
from textcl.model_card import MODEL_PATH_PLACEHOLDER

hub = pytest.importorskip("huggingface_hub")


class Hub(SimpleNamespace):
    """The mocked hub: ``cls`` replaces ``huggingface_hub.HfApi``, ``api`` is the client it
    returns. Both are autospecs of the real ``HfApi``: a method textcl calls must exist there
    and take the arguments given (a wrong name raises ``AttributeError``, a wrong argument
    ``TypeError``). ``uploaded`` lists the files of each ``upload_folder`` call, read then."""

    cls: mock.MagicMock
    api: mock.MagicMock
    uploaded: list[list[str]]


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> Hub:
    api = mock.create_autospec(hub.HfApi, instance=True)
    uploaded: list[list[str]] = []

    def upload_folder(**kwargs: Any) -> SimpleNamespace:
        folder = Path(kwargs["folder_path"])  # what would be uploaded, read now (it is real)
        uploaded.append(
            sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        )
        return SimpleNamespace(commit_url="https://hf.example/upload_folder")

    api.upload_folder.side_effect = upload_folder
    api.upload_file.return_value = SimpleNamespace(commit_url="https://hf.example/upload_file")
    cls = mock.create_autospec(hub.HfApi, return_value=api)
    monkeypatch.setattr(hub, "HfApi", cls)
    monkeypatch.setattr(hub, "get_token", lambda: "hf_test_token")
    return Hub(cls=cls, api=api, uploaded=uploaded)


@pytest.fixture
def run_dir(tiny_encoder: SentenceEncoder, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    tiny_encoder.save(run / "best")
    tiny_encoder.save(run / "final")
    (run / "config.json").write_text("{}")  # a run's own config: not a model
    return run


def _kwargs(method: mock.MagicMock) -> dict[str, Any]:
    """The keyword arguments of the one call of ``method`` (positional ones are not used)."""
    method.assert_called_once()
    assert method.call_args.args == ()
    return dict(method.call_args.kwargs)


def test_the_fake_is_the_real_api(fake_hub: Hub) -> None:
    """The autospec refuses what the real client would, so the tests below can fail."""
    with pytest.raises(AttributeError):
        fake_hub.api.upload_model  # noqa: B018  (no such HfApi method)
    with pytest.raises(TypeError):
        fake_hub.api.create_repo("me/x", public=True)  # no such argument


def test_push_uploads_best_of_a_run(
    fake_hub: Hub, run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["push", str(run_dir), "--repo-id", "me/tiny", "--private", "--commit-message", "v1"])
    assert rc == 0
    fake_hub.cls.assert_called_once_with(token="hf_test_token")
    api = fake_hub.api
    assert [c[0] for c in api.method_calls] == ["create_repo", "upload_folder", "upload_file"]
    api.create_repo.assert_called_once_with(
        "me/tiny", private=True, exist_ok=True, repo_type="model"
    )
    api.create_branch.assert_not_called()
    upload = _kwargs(api.upload_folder)
    assert Path(upload["folder_path"]) == run_dir / "best"
    assert upload["repo_id"] == "me/tiny" and upload["revision"] is None
    assert upload["repo_type"] == "model"
    assert upload["commit_message"] == "v1"
    (files,) = fake_hub.uploaded
    assert {"modules.json", "textcl_config.json", "model.safetensors"} <= set(files)
    # The card's snippets get the hub id instead of the local placeholder.
    card = _kwargs(api.upload_file)
    assert card["path_in_repo"] == "README.md" and "README.md" in upload["ignore_patterns"]
    assert card["repo_id"] == "me/tiny" and card["repo_type"] == "model"
    assert card["revision"] is None and card["commit_message"] == "v1 (model card)"
    text = card["path_or_fileobj"].decode()
    assert "SentenceEncoder.load('me/tiny')" in text and MODEL_PATH_PLACEHOLDER not in text
    assert "me/tiny" in capsys.readouterr().out


def test_push_falls_back_to_final_and_takes_model_folders(
    fake_hub: Hub, run_dir: Path, tmp_path: Path
) -> None:
    import shutil

    shutil.rmtree(run_dir / "best")
    assert main(["push", str(run_dir), "--repo-id", "me/tiny", "--revision", "dev"]) == 0
    upload = _kwargs(fake_hub.api.upload_folder)
    assert Path(upload["folder_path"]) == run_dir / "final" and upload["revision"] == "dev"
    fake_hub.api.create_branch.assert_called_once_with(
        "me/tiny", branch="dev", exist_ok=True, repo_type="model"
    )
    assert _kwargs(fake_hub.api.upload_file)["revision"] == "dev"
    # A checkpoint folder: its model/ subfolder; a model folder: itself.
    ckpt = tmp_path / "ckpt"
    shutil.copytree(run_dir / "final", ckpt / "model")
    fake_hub.api.reset_mock()
    assert main(["push", str(ckpt), "--repo-id", "me/tiny"]) == 0
    assert Path(_kwargs(fake_hub.api.upload_folder)["folder_path"]) == ckpt / "model"
    fake_hub.api.reset_mock()
    assert main(["push", str(run_dir / "final"), "--repo-id", "me/tiny"]) == 0
    assert Path(_kwargs(fake_hub.api.upload_folder)["folder_path"]) == run_dir / "final"


def test_push_errors(
    fake_hub: Hub,
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
    assert fake_hub.api.method_calls == []  # nothing was created or uploaded


def test_push_help_lists_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["push", "--help"])
    out = capsys.readouterr().out
    for flag in ("--repo-id", "--private", "--revision", "--commit-message", "RUN_OR_MODEL_DIR"):
        assert flag in out
