"""A plain projection head is told apart from logits a model scales or caps in its own forward."""

import pytest

from pipeline.model import loading, output_head


@pytest.mark.parametrize("setting", [None, *[(name, 0.5) for name in output_head.LOGIT_TRANSFORMS]])
def test_any_logit_transform_in_the_config_means_the_full_forward(tiny_model_dir, setting):
    model = loading.load_model(str(tiny_model_dir))
    if setting is not None:
        setattr(model.config, *setting)
    assert output_head.is_plain_projection(model) is (setting is None)
    if setting is not None:  # 1.0 scales nothing: the head is still all there is
        setattr(model.config, setting[0], 1.0)
        assert output_head.is_plain_projection(model)
