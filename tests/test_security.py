"Security guarantees that cross no server: models load from safetensors only, never run remote code."
import json, shutil

import pytest

from sentiment_nb.infer import load_model


def test_pickle_weights_are_refused(untrained_model, tmp_path):
    "A model folder whose weights are a pickle (pytorch_model.bin) is refused, not unpickled."
    import torch
    from transformers import AutoModelForSequenceClassification
    pickled = tmp_path / "pickled"
    shutil.copytree(untrained_model, pickled)
    torch.save(AutoModelForSequenceClassification.from_pretrained(untrained_model).state_dict(), pickled / "pytorch_model.bin")
    for f in pickled.glob("*.safetensors"): f.unlink()
    with pytest.raises(Exception) as e:
        load_model(pickled)
    assert "safetensors" in str(e.value).lower()


def test_remote_code_in_a_config_is_not_run(untrained_model, tmp_path):
    "A config that asks for custom code (auto_map) does not get it run: trust_remote_code stays off."
    d = tmp_path / "remote"
    shutil.copytree(untrained_model, d)
    (d / "evil.py").write_text("open(__file__ + '.ran', 'w').write('ran')\n")
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForSequenceClassification": "evil.EvilModel", "AutoConfig": "evil.EvilConfig"}
    (d / "config.json").write_text(json.dumps(cfg))
    try: load_model(d)
    except Exception: pass                      # refusing is fine too; running the code is not
    assert not (d / "evil.py.ran").exists()
