import pytest
import torch
import torch.nn.functional as F

from anomaly_vlm.methods.clip import CLIPBaselineModule
from anomaly_vlm.prompts import PromptSet

TWO_PROMPT = PromptSet("two_prompt", ["flawless {}"], ["damaged {}"], ["a photo of a {}."])


def test_scores_follow_the_two_prompt_formula(tiny_backbone):
    module = CLIPBaselineModule(tiny_backbone, TWO_PROMPT)
    module.setup_category("disc", None)
    images = torch.rand(2, 3, 128, 128)
    prediction = module.predict_images(images)
    scores, maps = prediction.image_score, prediction.anomaly_map
    text = F.normalize(
        tiny_backbone.encode_text(["a photo of a flawless disc.", "a photo of a damaged disc."]), dim=-1
    )
    image = F.normalize(tiny_backbone.clip.encode_image(tiny_backbone.normalize(images)), dim=-1)
    expected = (100 * image @ text.T).softmax(-1)[:, 1]
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-5)
    assert maps.shape == (2, 128, 128)
    assert float(maps.min()) >= 0 and float(maps.max()) <= 1


def test_clip_baseline_is_zero_shot_only(tiny_backbone):
    with pytest.raises(ValueError, match="zero-shot only"):
        CLIPBaselineModule(tiny_backbone, TWO_PROMPT, shots=2)
    assert not CLIPBaselineModule(tiny_backbone, TWO_PROMPT).is_trainable
