"""detoxrl.modelcard: the card's front matter is huggingface_hub's (ModelCard.load reads it back)."""

import json

from huggingface_hub import ModelCard

from detoxrl.modelcard import front_matter


def test_front_matter_round_trips_with_base_model_license_datasets_and_model_index(tmp_path):
    compare = tmp_path / "compare.json"
    compare.write_text(json.dumps({"detoxification": {
        "primary": {"measure": "expected_max", "description": "expected maximum toxicity over the 8 samples of a prompt",
                    "measures": [{"judge": "packaged:profanity-check", "reduction": 0.2938, "evaluated": True},
                                 {"judge": "packaged:hatesonar", "reduction": None, "evaluated": False}]},
        "quality_gate": {"faithfulness": {"diff": -0.0125}}}}))
    cfg = {"data": {"source": "knkarthick/dialogsum"}}
    text = "\n".join(front_matter(cfg, "HuggingFaceTB/SmolLM2-135M-Instruct", False, False, False, "rloo", compare)) + "# card\n"
    data = ModelCard(text).data
    assert data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and data.license == "apache-2.0"
    assert data.datasets == ["knkarthick/dialogsum"] and data.library_name == "peft" and "rloo" in data.tags
    results = {r.metric_name: r.metric_value for r in data.eval_results}
    assert results == {"packaged:profanity-check: reduction of the expected maximum toxicity over the 8 samples of a prompt": 0.2938,
                       "faithfulness change (MiniLM cosine, greedy)": -0.0125}


def test_front_matter_without_an_evaluation_or_a_hub_base_says_only_what_it_knows():
    text = "\n".join(front_matter({"data": {"source": "packaged:chitchat"}}, None, True, True, True, "ppo", None)) + "# card\n"
    data = ModelCard(text).data
    assert data.library_name == "transformers" and data.pipeline_tag == "summarization" and "sft" in data.tags
    assert data.base_model is None and data.license is None and data.datasets is None and not data.eval_results
