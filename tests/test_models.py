"""Model ids and the one-off conversion of the embedded LLM."""
import subprocess
import sys
from pathlib import Path

import pytest

from demo.core.models import ModelLoadError, canonical_id, encoder_folder, llm_folder

REPO = Path(__file__).resolve().parent.parent


def test_embedded_models_record_their_hub_twins():
    assert canonical_id("embedded:all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    assert canonical_id("embedded:SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert canonical_id("HuggingFaceTB/SmolLM2-360M-Instruct") == "HuggingFaceTB/SmolLM2-360M-Instruct"


def test_hub_ids_and_folders_pass_through_unchanged(tmp_path):
    assert llm_folder("HuggingFaceTB/SmolLM2-135M-Instruct", tmp_path) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert encoder_folder(str(tmp_path)) == str(tmp_path)
    assert not any(tmp_path.iterdir())  # nothing converted or downloaded for a hub id


def test_unknown_embedded_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="known: "):
        llm_folder("embedded:GPT-17", tmp_path)
    with pytest.raises(ModelLoadError, match="Unknown embedded"):
        canonical_id("embedded:nope")


def test_embedded_encoder_folder_is_a_sentence_transformers_model():
    folder = Path(encoder_folder("embedded:all-MiniLM-L6-v2"))
    assert (folder / "modules.json").is_file() or (folder / "config.json").is_file()


@pytest.mark.slow
def test_two_processes_converting_at_once_convert_once(tmp_path):
    """Another process and this one start at once: both succeed and see one complete folder; no temporary
    debris is left. (This process has its imports done, so it takes the lock first and converts while
    the other imports, then waits for the folder.)"""
    code = ("import sys; from pathlib import Path; from demo.core.models import llm_folder; "
            "print(llm_folder('embedded:SmolLM2-135M-Instruct', Path(sys.argv[1])))")
    other = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    here = llm_folder("embedded:SmolLM2-135M-Instruct", tmp_path)
    out, err = other.communicate(timeout=600)
    assert other.returncode == 0, err[-2000:]
    assert out.strip().splitlines()[-1] == here
    folder = Path(here)
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert "quantization_config" not in (folder / "config.json").read_text()
    leftovers = [p.name for p in (tmp_path / "models").iterdir() if p.name.startswith(".convert-")]
    assert leftovers == []
