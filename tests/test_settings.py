"""PPLUG_* variables: read into typed settings, and a value the app cannot use named in a clear error."""
import pytest
import torch

from demo.core.settings import Settings, SettingsError


def test_values_are_read_and_typed():
    s = Settings.from_env({"PPLUG_MAX_ITEMS": " 12 ", "PPLUG_TAU": "0.1", "PPLUG_LLM_DTYPE": "bfloat16",
                           "PPLUG_JOURNAL_MODE": "DELETE", "PPLUG_BATCH_ROWS": "", "PPLUG_DEVICE": "cpu"})
    assert s.limits.max_items == 12 and s.tau == 0.1 and s.dtype.is_floating_point
    assert s.db_journal_mode == "DELETE" and s.batch_rows == Settings().batch_rows  # empty = default


@pytest.mark.parametrize("name,value,says", [
    ("MAX_ITEMS", "ten", "is not a whole number"),
    ("MAX_NEW_TOKENS", "1.5", "is not a whole number"),
    ("MAX_UPLOAD_MB", "lots", "is not a number"),
    ("MAX_UPLOAD_MB", "nan", "must be above 0"),
    ("TAU", "-1", "must be above 0"),
    ("BATCH_ROWS", "0", "must be above 0"),
    ("LLM_DTYPE", "bogus", "is not one of: auto, float32, bfloat16, float16"),
    ("JOURNAL_MODE", "fast", "is not one of"),
    ("DEVICE", "gpu", "is not a device"),
])
def test_a_value_the_app_cannot_use_is_named(name, value, says):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({f"PPLUG_{name}": value})
    assert f"PPLUG_{name}={value!r}" in str(caught.value) and says in str(caught.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is here")
def test_cuda_asked_for_where_there_is_none_is_named():
    with pytest.raises(SettingsError, match="sees no CUDA GPU"):
        Settings.from_env({"PPLUG_DEVICE": "cuda"})
