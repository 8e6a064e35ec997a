"""Shared config defaults and config loading.

Config files in configs/ call `base_config()` and override what their experiment
changes, so every paper row is a short file with its hyper-parameters visible. The
defaults live in the package (not in configs/common.py) so that a config file
anywhere, a test or a notebook can import them without touching sys.path.
"""

import importlib.util
import pathlib

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    """Defaults of the paper's protocol (SGD momentum 0.9, lr x0.1 at half, frozen BN)."""
    c = ml_collections.ConfigDict()
    c.task = "finetune"  # "finetune" | "pretrain": same loop, different defaults.
    c.config_name = ""
    c.method = "erm"  # Recorded in results; "very_large_dropout" when dropout_rate > 0.
    c.seed = 0  # Root PRNG key: init, dropout masks, batch sampling.
    c.trial_seed = 0  # DomainBed: seeds the in/out split of every domain.

    c.data = ml_collections.ConfigDict()
    c.data.name = "digits_domains"
    c.data.data_dir = ml_collections.FieldReference(None, field_type=str)
    c.data.test_domains = "syn"  # Comma-separated names or indices ("3", "syn,digits").
    c.data.holdout_fraction = 0.2
    c.data.batch_size_per_domain = 32  # One batch of B images per training domain.
    c.data.augment = "crop"  # "none" | "crop" (pad-and-crop) | "flip_crop" | "domainbed".
    # Side of the square images fed to the model: images are decoded and resized to it at load
    # (the paper's eval resize). None: the dataset's own size (32 for the digits, 224 for the
    # variable-size DomainBed photos).
    c.data.image_size = ml_collections.FieldReference(None, field_type=int)
    # Where DomainBed's downloaded folders are (PACS/, VLCS/, office_home/, ...); None: TFDS's
    # <data_dir>/downloads/manual.
    c.data.manual_dir = ml_collections.FieldReference(None, field_type=str)
    c.data.normalize = "minus_one_one"  # "minus_one_one" | "imagenet".
    c.data.eval_batch_size = 512
    c.data.eval_max_examples = ml_collections.FieldReference(None, field_type=int)  # Per split.
    c.data.prefetch = 2

    c.model = ml_collections.ConfigDict()
    c.model.name = "small_resnet"  # See richft_jax.models.registry.
    c.model.kwargs = ml_collections.ConfigDict()
    c.model.freeze_bn = True
    c.model.head_zero_init = False
    # Compute dtype (parameters stay float32): "auto" = bfloat16 on GPU/TPU, float32 on CPU.
    c.model.dtype = "auto"

    c.pretrained = ml_collections.ConfigDict()
    c.pretrained.path = ml_collections.FieldReference(None, field_type=str)
    c.pretrained.pretrain_config = ml_collections.FieldReference(None, field_type=str)

    c.dropout_rate = 0.0  # Penultimate-feature dropout rate (0.9 in the paper's runs).
    c.lp_head = False  # LP-FT: start from the linear-probe head (LP is logged as step 0).
    c.dropout_schedule = "constant"  # | "early" | "early_linear" | "late" (Liu et al. 2023).
    c.dropout_cutoff = 0.25  # Fraction of num_steps where early dropout ends / late begins.
    # Uniform running average of the weights from this step on, evaluated beside the model
    # (rows with method "<method>+moving_average"); None: off.
    c.moving_average_start = ml_collections.FieldReference(None, field_type=int)
    # Rates of the ViT's own dropout (inside blocks) and stochastic depth (rising linearly with
    # depth to this rate), on the same schedule as dropout_rate; 0: off.
    c.block_dropout_rate = 0.0
    c.drop_path_rate = 0.0

    # Regularized self-labeling (Li & Zhang 2021; richft_jax/methods/self_labeling.py).
    c.self_labeling = ml_collections.ConfigDict()
    sl = c.self_labeling
    sl.radius = ml_collections.FieldReference(None, field_type=float)  # D; None: unconstrained.
    sl.gamma = 1.0  # Radius factor per stage, input to output: D, D gamma, D gamma^2, ...
    sl.head_radius = ml_collections.FieldReference(None, field_type=float)  # Head kernel norm.
    sl.correction_start = ml_collections.FieldReference(None, field_type=int)  # Step; None: off.
    sl.correction_threshold = 0.9
    sl.reweight_start = ml_collections.FieldReference(None, field_type=int)  # Step; None: off.
    sl.reweight_temperature = 2.0

    # Label noise in the training domains' in splits (richft_jax/methods/label_noise.py).
    c.label_noise = ml_collections.ConfigDict()
    c.label_noise.kind = "none"  # | "symmetric" | "pairwise" (class-dependent).
    c.label_noise.rate = 0.0
    c.label_noise.seed = 0

    # End-of-run measurements, written into summary.json.
    c.measure = ml_collections.ConfigDict()
    c.measure.feature_distortion = False  # Penultimate features, pretrained vs fine-tuned.
    c.measure.layer_distances = False  # |W - W_pretrained| per tensor.
    c.measure.noise_stability = False  # Logit change under Gaussian input / weight noise.
    c.measure.noise_sigmas = (0.01, 0.1)
    c.measure.max_examples = 512  # Per split.

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "sgd"  # "sgd" (momentum, coupled weight decay as torch) | "adamw".
    c.optim.lr = 1e-3
    c.optim.momentum = 0.9
    c.optim.weight_decay = 1e-4
    c.optim.head_lr_factor = 1.0  # Last-layer learning-rate factor.
    c.optim.schedule = "step"  # "step": x decay_factor at decay_at fractions | "cosine".
    c.optim.decay_at = (0.5,)
    c.optim.decay_factor = 0.1
    c.optim.warmup_steps = 0

    c.num_steps = 10_000
    c.log_every = 50
    c.eval_every = 300
    c.checkpoint_every = 300
    c.keep_checkpoints = 2
    return c


def load_config_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """Loads `get_config(arg)` from "path" or "path:arg", resolved from the cwd, then the repo."""
    if arg is None and ":" in path:
        path, arg = path.split(":", 1)
    candidates = [pathlib.Path(path), pathlib.Path(__file__).resolve().parents[1] / path]
    for candidate in candidates:
        if candidate.is_file():
            spec = importlib.util.spec_from_file_location(candidate.stem, candidate)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module.get_config(arg) if arg is not None else module.get_config()
    raise FileNotFoundError(f"Config file {path!r} not found (looked at {candidates}).")


def method_base(arg: str | None) -> tuple[ml_collections.ConfigDict, list[str]]:
    """The config a method config adds its switches to, and the comma-separated args:
    `domainbed[/ARG]` / `domainbed_vit[/ARG]` load the paper's ResNet-50 / ViT-B/16 DomainBed
    config (with ARG), anything else the embedded demo (`tiny` for its tiny sizes)."""
    args = [a for a in (arg or "").split(",") if a]
    for a in args:
        kind, _, rest = a.partition("/")
        if kind in ("domainbed", "domainbed_vit"):
            name = "resnet50_dropout" if kind == "domainbed" else "vit_b16_dropout"
            return load_config_file(f"configs/{name}.py", rest or None), args
    return load_config_file("configs/demo.py", "tiny" if "tiny" in args else None), args
