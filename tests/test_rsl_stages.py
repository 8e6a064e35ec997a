"""Regularized self-labeling's layer-wise radii follow the stages each backbone declares:
ResNet-50's stem and four layers, ViT-B/16's embedding, twelve encoder blocks and final norm,
and the demo networks exactly as before the declarations (the old module-name-prefix rule)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from richft_jax import config_lib
from richft_jax.methods import self_labeling as sl
from richft_jax.models import registry
from richft_jax.models.classifier import Classifier

D, GAMMA, D_HEAD = 2.0, 1.5, 3.0
SHAPE = (224, 224, 3)


def _classifier(name: str, **kwargs) -> Classifier:
    return Classifier(registry.build_backbone(name, "float32", **kwargs), 10)


def _params(model: nn.Module, shape=SHAPE):
    """The parameter tree's shapes only: no weights, nothing computed."""
    init = lambda: model.init(jax.random.key(0), jnp.zeros((1, *shape)), train=False)  # noqa: E731
    return jax.eval_shape(init)["params"]


def _flat(tree) -> dict[str, float]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(p.key for p in path): v for path, v in leaves}


def _radii(model: nn.Module, params, radius=D, head_radius=D_HEAD) -> dict[str, float]:
    stages = sl.backbone_stages(model)
    return _flat(sl.projection_radii(params, stages, radius, GAMMA, head_radius))


@pytest.fixture(scope="module")
def resnet50():
    model = _classifier("resnet50")
    return model, _params(model)


@pytest.fixture(scope="module")
def vit_b16():
    model = _classifier("vit_b16")
    return model, _params(model)


def test_resnet50_radii_grow_from_the_stem_through_layer4(resnet50):
    model, params = resnet50
    radii = _radii(model, params)
    assert [name for name, _ in sl.backbone_stages(model)] == [
        "stem",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
    ]
    backbone = {k: v for k, v in radii.items() if k.startswith("backbone/")}
    assert sorted(set(backbone.values())) == pytest.approx([D * GAMMA**s for s in range(5)])
    for name in ("conv1/kernel", "bn1/scale", "bn1/bias"):  # The stem is one stage.
        assert radii[f"backbone/{name}"] == D
    for path, r in backbone.items():
        top = path.split("/")[1]
        stage = int(top[len("layer")]) if top.startswith("layer") else 0
        assert r == pytest.approx(D * GAMMA**stage), path
    assert radii["backbone/layer4_2/conv3/kernel"] == pytest.approx(D * GAMMA**4)
    assert radii["head/kernel"] == D_HEAD and radii["head/bias"] == float("inf")


def test_vit_b16_each_encoder_block_is_its_own_stage(vit_b16):
    model, params = vit_b16
    radii = _radii(model, params)
    stages = sl.backbone_stages(model)
    assert len(stages) == 1 + 12 + 1
    backbone = {k: v for k, v in radii.items() if k.startswith("backbone/")}
    assert sorted(set(backbone.values())) == pytest.approx([D * GAMMA**s for s in range(14)])
    embedding = ["embedding/kernel", "embedding/bias", "cls"]
    for name in [*embedding, "Transformer/posembed_input/pos_embedding"]:
        assert radii[f"backbone/{name}"] == D
    for i in range(12):
        block = {k: v for k, v in backbone.items() if f"/encoderblock_{i}/" in k}
        assert len(block) == 16  # 2 LayerNorms x 2, attention q/k/v/out x 2, MLP 2 x 2.
        assert list(block.values()) == pytest.approx([D * GAMMA ** (i + 1)] * 16), i
    for name in ("scale", "bias"):
        assert radii[f"backbone/Transformer/encoder_norm/{name}"] == pytest.approx(D * GAMMA**13)
    assert radii["head/kernel"] == D_HEAD and radii["head/bias"] == float("inf")


def test_vit_pre_logits_share_the_last_stage_with_the_final_norm():
    model = _classifier("vit_s16", representation_size=384)
    radii = _radii(model, _params(model, (32, 32, 3)))
    last = D * GAMMA**13
    assert radii["backbone/pre_logits/kernel"] == pytest.approx(last)
    assert radii["backbone/Transformer/encoder_norm/scale"] == pytest.approx(last)
    assert max(v for k, v in radii.items() if k.startswith("backbone/")) == pytest.approx(last)


@pytest.mark.parametrize("name", ["resnet50", "vit_b16", "small_resnet", "small_vit"])
def test_declared_stages_follow_the_forward_pass(name):
    """Modules inside a stage are first called in the declared stage order."""
    model = _classifier(name)
    stages = sl.backbone_stages(model)
    seen: list[int] = []

    def interceptor(next_fun, args, kwargs, context):
        path = list(context.module.path)
        if path[:1] == ["backbone"] and len(path) > 1:
            owners = [
                i
                for i, (_, prefixes) in enumerate(stages)
                if any(path[1:][: len(p.split("/"))] == p.split("/") for p in prefixes)
            ]
            seen.extend(owners[:1])
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        _params(model, (32, 32, 3))
    assert seen == sorted(seen) and set(seen) == set(range(len(stages)))


def test_rsl_hook_projects_vit_b16_with_the_declared_radii(vit_b16):
    model, params = vit_b16
    config = config_lib.base_config()
    config.self_labeling.radius, config.self_labeling.gamma = D, GAMMA
    method = sl.method(config, model, SHAPE)
    anchor = jax.eval_shape(sl.anchor_params, params)
    out, _ = jax.eval_shape(method.post_update, params, anchor, jnp.int32(0))
    assert jax.tree.structure(out) == jax.tree.structure(params)


# ----------------------------------------------------------------------------- errors
def _toy(stages_list):
    class Toy(nn.Module):
        @nn.nowrap
        def stages(self):
            return stages_list

        @nn.compact
        def __call__(self, x, *, train):
            x = nn.Dense(4, name="a")(x)
            x = nn.Dense(4, name="a_b")(x)
            return nn.Dense(4, name="c")(x)

    model = Classifier(Toy(), 3)
    return model, _params(model, (5,))


def test_an_unassigned_parameter_is_an_error_naming_it():
    model, params = _toy([("one", ("a",)), ("two", ("c",))])  # a_b: no stage ("a" is whole).
    with pytest.raises(ValueError, match="backbone/a_b/"):
        _radii(model, params)


def test_a_parameter_in_two_stages_or_an_empty_stage_is_an_error():
    model, params = _toy([("one", ("a", "a_b")), ("two", ("c", "a_b/kernel"))])
    with pytest.raises(ValueError, match=r"backbone/a_b/kernel.*\['one', 'two'\]"):
        _radii(model, params)
    model, params = _toy([("one", ("a", "a_b")), ("none", ("x",)), ("two", ("c",))])
    with pytest.raises(ValueError, match=r"\['none'\] own no parameter"):
        _radii(model, params)


def test_a_backbone_without_declared_stages_is_an_error():
    model = Classifier(nn.Dense(4), 3)
    with pytest.raises(ValueError, match="Dense declares no stages"):
        sl.backbone_stages(model)


# ----------------------------------------------------------------------------- demo unchanged
def _legacy_radii(model: nn.Module, params, shape) -> dict[str, float]:
    """The rule before declared stages: a stage per top-level name prefix (before the first
    "_"), ordered by first call in the forward pass; parameters on the backbone itself: 0."""
    order: list[str] = []

    def interceptor(next_fun, args, kwargs, context):
        path = context.module.path
        if len(path) == 2 and path[0] == "backbone" and path[1].split("_")[0] not in order:
            order.append(path[1].split("_")[0])
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        _params(model, shape)
    out = {}
    for path in _flat(jax.tree.map(lambda _: 0, params)):
        names = path.split("/")
        if names[0] == "head":
            out[path] = D_HEAD if names[-1] == "kernel" else float("inf")
        else:
            stage = 0 if len(names) == 2 else order.index(names[1].split("_")[0])
            out[path] = float(D) * float(GAMMA) ** stage
    return out


@pytest.mark.parametrize(
    "config_arg",
    ["demo_rsl", "demo_rsl:tiny", "demo_early_dropout:vit", "demo_early_dropout:vit,tiny"],
)
def test_demo_radii_are_exactly_those_of_the_old_prefix_rule(config_arg):
    config = config_lib.load_config_file(config_arg)
    shape = (32, 32, 3)  # The demo's digits and letters.
    model = registry.build_classifier(config.model, 10)
    params = _params(model, shape)
    assert _radii(model, params) == _legacy_radii(model, params, shape)
