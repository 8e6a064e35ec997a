"""The config a method config (early / late dropout, RSL) adds its switches to.

The embedded demo (`base=demo`, the default; `tiny` for its tiny sizes), or the paper's
DomainBed ResNet-50 / ViT-B/16 config (`base=resnet50` / `base=vit_b16`, with `dataset`,
`test_domain`, `dry_run` as those configs take them), with dropout 0.9 as the method config
then sets it.
"""

import ml_collections

from richft_jax.configs import demo, resnet50_dropout, vit_b16_dropout

PAPER = {"resnet50": resnet50_dropout, "vit_b16": vit_b16_dropout}
ARGS = {"tiny": False, "base": "demo", "dataset": "pacs", "test_domain": "0", "dry_run": False}


def method_base(
    tiny: bool = False,
    base: str = "demo",
    dataset: str = "pacs",
    test_domain: str = "0",
    dry_run: bool = False,
) -> ml_collections.ConfigDict:
    """The demo (no along-run average, 2 checkpoints kept) or a paper config; arguments that do
    not apply to the chosen base are refused rather than ignored."""
    if base == "demo":
        paper = {"dataset": dataset, "test_domain": test_domain, "dry_run": dry_run}
        given = sorted(k for k, v in paper.items() if v != ARGS[k])
        if given:
            raise ValueError(
                f"config argument{'s' * (len(given) > 1)} {', '.join(given)}: only with "
                "base=resnet50 or base=vit_b16 "
                "(the demo's test domain is --config.data.test_domains)."
            )
        c = demo.build(tiny=tiny)
        c.moving_average_start = None  # The comparison rows need no along-run average.
        c.keep_checkpoints = 2
        return c
    if base not in PAPER:
        raise ValueError(
            f"config argument base={base!r}: expected one of demo, {', '.join(PAPER)}."
        )
    if tiny:
        raise ValueError("config argument tiny: only with base=demo (paper configs: dry_run).")
    return PAPER[base].build(dataset=dataset, test_domain=test_domain, dry_run=dry_run)
