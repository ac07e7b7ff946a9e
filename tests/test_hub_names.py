"""Hub names where a path is accepted: a model id resolves from the Hugging Face cache (a fake
cache here, built from the tiny model); offline (HF_HUB_OFFLINE=1, set for every test) a name
that is neither a local path nor cached is one line naming it; local folders and files win."""

import shutil

import pytest

from tether.cli import main
from tether.data.readers import read_rows
from tether.errors import DataError, TetherError
from tether.models.loading import load_tokenizer
from tether.models.registry import resolve_model
from tether.utils.hub import looks_like_hub_dataset, looks_like_hub_id

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, tiny_model_path):
    """A Hugging Face cache holding the tiny model as ``tether-test/tiny`` (huggingface_hub's
    layout: models--owner--name/refs/main -> snapshots/<commit>/)."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    repo = cache / "models--tether-test--tiny"
    shutil.copytree(tiny_model_path, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return repo / "snapshots" / COMMIT


def test_hub_ids_are_told_from_paths():
    assert looks_like_hub_id("HuggingFaceTB/SmolLM2-1.7B-Instruct") and looks_like_hub_id("gpt2")
    assert not any(looks_like_hub_id(p) for p in ("./gpt2", "/models/x", "runs/rm/reward_model", "~/m", "a/../b"))
    assert looks_like_hub_dataset("trl-lib/ultrafeedback_binarized") and not looks_like_hub_dataset("prompts.jsonl")


def test_a_cached_hub_model_resolves_offline(hub_cache):
    assert resolve_model("tether-test/tiny") == hub_cache
    assert load_tokenizer("tether-test/tiny").eos_token is not None


def test_a_local_folder_wins_over_a_hub_id(tmp_path, monkeypatch, tiny_model_path, hub_cache):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_model_path, tmp_path / "tether-test" / "tiny")
    assert resolve_model("tether-test/tiny").resolve() == tmp_path / "tether-test" / "tiny"


def test_an_uncached_hub_model_offline_is_one_line_naming_it(capsys, tmp_path, hub_cache):
    with pytest.raises(TetherError, match="model 'no-such-org/no-such-model' is not a local folder and not in "
                                          r"the Hugging Face cache \(HF_HUB_OFFLINE=1"):
        resolve_model("no-such-org/no-such-model")
    code = main(["ppo", "--config", "configs/ppo-tiny.yaml", "quiet=true", f"output_dir={tmp_path}",
                 "policy=no-such-org/no-such-model"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: field \"policy\": model 'no-such-org/no-such-model' is not a local folder")


def test_an_uncached_hub_dataset_offline_is_one_line_naming_it():
    with pytest.raises(DataError) as info:
        read_rows("no-such-org/no-such-data")
    assert str(info.value) == ("no-such-org/no-such-data: not a local file or folder, and not a data set in the "
                               "Hugging Face cache (HF_HUB_OFFLINE=1: nothing is downloaded)")
    with pytest.raises(DataError, match="^prompts.jsonl: file not found$"):
        read_rows("prompts.jsonl")  # a missing file stays a missing file
