"""Text-to-image with Next-DiT: text encoder -> flow ODE over latents (CFG) -> VAE decode -> PIL images.

A pipeline directory holds the three parts side by side::

    transformer/         NextDiT: native (config.json + model*.safetensors), official (model_args.pth +
                         consolidated*.safetensors) or diffusers layout
    text_encoder/        a transformers model (Gemma-2B for Lumina-Next), with its tokenizer here or in tokenizer/
    tokenizer/           (optional)
    vae/                 a diffusers AutoencoderKL (SDXL VAE); absent for pixel-space models
    lumina_pipeline.json (optional) text layer, max length, codec, generation defaults

A diffusers ``Lumina-Next-SFT-diffusers`` folder has this layout already. An official release folder (weights only)
is used with explicit ``text_encoder=`` and ``vae=`` paths.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image

from .._paths import resolve_path
from ..models.lora import merge_lora
from ..models.nextdit import NextDiT
from ..models.rope import METHODS as ROPE_METHODS
from ..models.rope import RopeScaling
from ..sampling import SCHEDULES, SOLVERS, ContextDrop, GraphedVelocity, Guidance, sample
from ..conditioning import TextEncoder
from .encoders import LatentCodec, PixelCodec, VAECodec, to_pil

PIPELINE_CONFIG = "lumina_pipeline.json"


@dataclass
class GenerationDefaults:
    """Defaults of :meth:`LuminaPipeline.__call__` (the official Lumina-Next demo settings)."""

    steps: int = 30
    solver: str = "midpoint"
    schedule: str = "uniform"
    shift: float = 4.0
    cfg: float = 4.0
    rope_scaling: str = "time_aware"
    scale_watershed: float = 0.3
    proportional_attn: bool = True
    context_drop: str | None = None  # a lumina.sampling.ContextDrop spec, e.g. "factor=2,until=0.6"; None = off


@dataclass
class PipelineConfig:
    """What `lumina_pipeline.json` may hold; every field optional."""

    text_layer: int = -2  # hidden_states index of the caption features (Gemma: the second to last)
    max_length: int = 256  # caption tokens
    codec: str = "vae"  # "vae" (latent space) or "pixel"
    pixel_channels: int = 3
    # where the parts are, when not in the default subfolders: a path relative to the pipeline directory, an
    # absolute path, or pkg:PACKAGE/SUBDIR (a folder inside an installed Python package)
    transformer: str | None = None
    text_encoder: str | None = None
    vae: str | None = None
    lora: str | None = None  # a LoRA adapter directory merged into the transformer on load
    defaults: GenerationDefaults = None  # type: ignore[assignment]

    def __post_init__(self):
        if self.defaults is None:
            self.defaults = GenerationDefaults()
        elif isinstance(self.defaults, dict):
            self.defaults = _from_dict(GenerationDefaults, self.defaults, "defaults")
        if self.codec not in ("vae", "pixel"):
            raise ValueError(f"`codec` must be 'vae' or 'pixel', got {self.codec!r}")

    @classmethod
    def load(cls, path: Path) -> "PipelineConfig":
        file = path / PIPELINE_CONFIG
        if not file.is_file():
            return cls()
        with open(file) as f:
            return _from_dict(cls, json.load(f), str(file))

    def save(self, path: Path) -> None:
        with open(path / PIPELINE_CONFIG, "w") as f:
            json.dump(asdict(self), f, indent=2)


def _from_dict(cls, d: dict, where: str):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; expected some of {sorted(known)}")
    return cls(**d)


def _default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _as_list(value, name: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"`{name}` must be a string or a non-empty list of strings, got {value!r}")


class LuminaPipeline:
    """Text-to-image generation with a NextDiT, a text encoder and a latent codec (VAE or pixels).

    ``pipe(prompt, ...)`` returns a list of PIL images (see :meth:`__call__`).
    """

    def __init__(self, transformer: NextDiT, text_encoder: TextEncoder, codec: LatentCodec,
                 config: PipelineConfig | None = None):
        self.transformer = transformer.eval()
        self.text_encoder = text_encoder
        self.codec = codec
        self.config = config or PipelineConfig()
        self.last_run: dict = {}  # what the last __call__ used (see __call__)
        self._graph_cache: dict = {}  # call signature -> GraphedVelocity (CUDA graphs kept across calls)
        tcfg = transformer.config
        if text_encoder.dim != tcfg.context_dim:
            raise ValueError(f"text-feature dim mismatch: the text encoder gives {text_encoder.dim}-d features but "
                             f"the transformer expects context_dim={tcfg.context_dim}")
        if codec.latent_channels != tcfg.in_channels:
            raise ValueError(f"latent channel mismatch: the {type(codec).__name__} has {codec.latent_channels} "
                             f"channels but the transformer expects in_channels={tcfg.in_channels}")

    GRAPH_CACHE_SIZE = 4  # GraphedVelocity objects kept (each holds its graphs and their memory pool)
    CAPTION_BUCKET = 64  # with CUDA graphs, caption lengths are padded to a multiple of this

    # -- loading ---------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path, *, text_encoder=None, vae=None, lora=None, lora_scale: float = 1.0,
                        ema: bool = True, dtype: torch.dtype | None = None, device=None) -> "LuminaPipeline":
        """Load a pipeline directory (see the module doc).

        ``text_encoder`` / ``vae``: directories that override ``path/text_encoder`` and ``path/vae`` (use them with an
        official weights-only folder); ``vae="pixel"`` for a pixel-space model. ``dtype`` of the transformer and
        text encoder (default bf16 on CUDA, fp32 on CPU); the VAE always runs in fp32. ``ema``: EMA weights of an
        official checkpoint (the default, as the official samplers). ``lora``: a LoRA adapter directory (written
        by ``lumina train``) merged into the transformer's weights, times ``lora_scale``.
        """
        root = Path(os.fspath(path)).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"pipeline directory {str(root)!r} does not exist")
        device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = dtype or _default_dtype(device)
        config = PipelineConfig.load(root)
        t_dir = resolve_path(config.transformer, root) if config.transformer else root
        merging = bool(lora is not None or config.lora)
        transformer = NextDiT.from_pretrained(t_dir, ema=ema, dtype=torch.float32 if merging else None)
        for adapter in (resolve_path(config.lora, root) if config.lora else None,
                        Path(os.fspath(lora)).expanduser() if lora is not None else None):
            if adapter is not None:
                merge_lora(transformer, adapter, scale=lora_scale)
        transformer = transformer.to(device=device, dtype=dtype)

        if text_encoder is not None:
            te_dir = Path(os.fspath(text_encoder)).expanduser()
        elif config.text_encoder:
            te_dir = resolve_path(config.text_encoder, root)
        else:
            te_dir = root / "text_encoder"
        if not (te_dir / "config.json").is_file():
            raise FileNotFoundError(f"no text encoder: expected a transformers model directory at {str(te_dir)!r} "
                                    f"(config.json + weights), or pass `text_encoder=`")
        tok_dir = root / "tokenizer" if text_encoder is None and (root / "tokenizer").is_dir() else te_dir
        encoder = TextEncoder.from_pretrained(te_dir, dtype=dtype, device=device, layer=config.text_layer,
                                              max_length=config.max_length, tokenizer_path=tok_dir)

        if vae == "pixel" or (vae is None and config.codec == "pixel"):
            codec: LatentCodec = PixelCodec(config.pixel_channels)
        else:
            vae_dir = (Path(os.fspath(vae)).expanduser() if vae is not None
                       else resolve_path(config.vae, root) if config.vae else root / "vae")
            if not (vae_dir / "config.json").is_file():
                raise FileNotFoundError(f"no VAE: expected a diffusers AutoencoderKL directory at {str(vae_dir)!r}, "
                                        f"or pass `vae=` (a directory, or 'pixel' for a pixel-space model)")
            codec = VAECodec.from_pretrained(vae_dir, device=device)
        return cls(transformer, encoder, codec, config)

    def save_pretrained(self, path, format: str = "native") -> None:
        """Write transformer/ (native, official or diffusers format), text_encoder/ (with its tokenizer), vae/ and the
        pipeline config, so that :meth:`from_pretrained` reads them back."""
        root = Path(os.fspath(path)).expanduser()
        root.mkdir(parents=True, exist_ok=True)
        state = self.transformer.state_dict()  # the weights to sample with: written as the EMA weights too
        self.transformer.save_pretrained(root / "transformer", format=format, ema_state=state)
        self.text_encoder.save_pretrained(root / "text_encoder")
        if isinstance(self.codec, VAECodec):
            self.codec.vae.save_pretrained(root / "vae")
        self.config.save(root)

    @property
    def device(self) -> torch.device:
        return self.transformer.x_embedder.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.x_embedder.weight.dtype

    @property
    def multiple(self) -> int:
        """Height and width must be multiples of this: codec downscale x patch size (16 for Lumina-Next)."""
        return self.codec.downscale * self.transformer.config.patch_size

    @property
    def default_size(self) -> int:
        """The training resolution in pixels (sample_size latents x codec downscale; 1024 for Lumina-Next)."""
        return self.transformer.config.sample_size * self.codec.downscale

    # -- generation ------------------------------------------------------------------------------
    def _transformer(self, compile: bool | str):
        """The transformer, or its torch.compile'd version (compiled once per backend, kept)."""
        if compile is False or compile is None:
            return self.transformer
        backend = "inductor" if compile is True else compile
        if not isinstance(backend, str):
            raise ValueError(f"`compile` must be a bool or a torch.compile backend name, got {compile!r}")
        cache = self.__dict__.setdefault("_compiled", {})
        if backend not in cache:
            cache[backend] = torch.compile(self.transformer, backend=backend, dynamic=False)
        return cache[backend]

    def check_size(self, height: int, width: int) -> None:
        m = self.multiple
        for name, v in (("height", height), ("width", width)):
            if isinstance(v, bool) or not isinstance(v, int) or v < m or v % m:
                raise ValueError(f"`{name}` must be a positive multiple of {m} (VAE downscale "
                                 f"{self.codec.downscale} x patch {self.transformer.config.patch_size}), got {v!r}")

    @torch.inference_mode()
    def encode_prompts(self, prompts: list[str], negative: list[str] | None):
        """Caption features and masks for [prompts, negative prompts] in one padded batch (as the official code)."""
        feats, mask = self.text_encoder.encode(prompts + (negative or []))
        return feats.to(self.device, self.dtype), mask.to(self.device)

    @torch.inference_mode()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] = "",
        *,
        height: int | None = None,
        width: int | None = None,
        steps: int | None = None,
        solver: str | None = None,
        schedule: str | None = None,
        shift: float | None = None,
        schedule_params: dict | None = None,
        cfg: float | None = None,
        cfg_channels: int | None = None,
        cfg_renorm: float | None = None,
        cfg_truncation: float | None = None,
        rope_scaling: str | None = None,
        scale_watershed: float | None = None,
        proportional_attn: bool | None = None,
        context_drop=None,
        cuda_graphs: bool | str | None = None,
        compile: bool | str = False,
        num_images_per_prompt: int = 1,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        progress: bool = True,
        callback: Callable[[int, float, torch.Tensor], None] | None = None,
    ):
        """Generate images for `prompt` (a string or a list: a batch).

        * ``height`` / ``width``: pixels, multiples of :attr:`multiple` (16 for Lumina-Next); default the training
          size. Larger sizes extrapolate with ``rope_scaling`` (one of ``lumina.models.rope.METHODS``; the official
          ``time_aware`` switch at ``scale_watershed`` by default; scale ``s = sqrt(H W) / training size``, active
          only when ``s > 1``) and proportional attention (``proportional_attn``).
        * ``steps``, ``solver`` (euler, midpoint, rk4, dopri5), ``schedule`` (uniform, sigmoid), ``shift`` (rational
          time shift), ``schedule_params`` (e.g. ``{"mu": 0.6, "alpha": 6, "beta": 20}`` for sigmoid): see
          :func:`lumina.sampling.sample`. Defaults come from the pipeline config (official demo:
          midpoint, 30 steps, shift 4).
        * ``cfg``: guidance scale against ``negative_prompt``; ``cfg_channels=3`` reproduces the official quirk of
          guiding only latent channels 0-2; ``cfg_renorm`` and ``cfg_truncation`` as Lumina-Image-2.0. One
          implementation with :func:`lumina.sampling.cfg_velocity` (:class:`lumina.sampling.Guidance`): a step with
          ``cfg = 1`` or ``t >= cfg_truncation`` is the conditional velocity alone (one model call of B samples).
        * ``context_drop``: merge the keys/values of image self-attention at the noisy steps (Lumina-Next's
          context drop): an int factor, a spec string ``"factor=2,until=0.6,layers=2:-2,method=pool"``, a dict or a
          :class:`lumina.sampling.ContextDrop`; ``0`` / ``"off"`` turns off a pipeline default; default: the
          pipeline config's (off). Off, the output is bitwise the plain sampler's.
        * ``cuda_graphs``: capture one evaluation (model forward + CFG combination) per distinct host-side decision
          in a CUDA graph and replay it every step (:class:`lumina.sampling.GraphedVelocity`). ``None`` (default):
          on for CUDA devices unless refused (a RoPE table that changes with every t: ``smooth_time_aware`` above
          the training size); ``True``: required, ``ValueError`` with the reason if refused; ``False``: off;
          ``"emulate"``: the graph bookkeeping on any device, for tests. A capture that fails warns and samples
          eagerly. Graphs are kept with the pipeline (the last 4 call signatures: batch, size, guidance and
          context-drop settings), so a repeated call replays them without capturing again; the caption features
          are copied into the graphs' static inputs (padded and masked to a multiple of :attr:`CAPTION_BUCKET` tokens, which
          changes nothing in the result). ``compile``: run the transformer under ``torch.compile`` (``True`` = inductor, or a backend
          name); compiled once per pipeline.
        * after a call, :attr:`last_run` holds what was used (context drop spec, graphs captured and replayed, or
          why graphs were refused, model evaluations).
        * ``seed`` or ``generator`` (a CPU generator): the initial noise is drawn on the CPU, so a seed gives the same
          image on every device. ``num_images_per_prompt`` images for each prompt.
        * ``output_type``: ``"pil"`` (list of PIL images), ``"pt"`` (float images in [0, 1], (B, 3, H, W)) or
          ``"latent"`` (the final latents).
        """
        d = self.config.defaults
        steps = d.steps if steps is None else steps
        solver = d.solver if solver is None else solver
        schedule = d.schedule if schedule is None else schedule
        shift = d.shift if shift is None else shift
        cfg = d.cfg if cfg is None else cfg
        rope_method = d.rope_scaling if rope_scaling is None else rope_scaling
        watershed = d.scale_watershed if scale_watershed is None else scale_watershed
        proportional_attn = d.proportional_attn if proportional_attn is None else proportional_attn
        context_drop = ContextDrop.parse(d.context_drop if context_drop is None else context_drop)
        height = self.default_size if height is None else height
        width = self.default_size if width is None else width

        prompts = _as_list(prompt, "prompt")
        negatives = _as_list(negative_prompt, "negative_prompt")
        if len(negatives) == 1:
            negatives = negatives * len(prompts)
        if len(negatives) != len(prompts):
            raise ValueError(f"`negative_prompt` must be one string or one per prompt ({len(prompts)}), "
                             f"got {len(negatives)}")
        self.check_size(height, width)
        if not isinstance(solver, str) or solver not in SOLVERS:
            raise ValueError(f"`solver` must be one of {sorted(SOLVERS)}, got {solver!r}")
        if not isinstance(schedule, str) or schedule not in SCHEDULES:
            raise ValueError(f"`schedule` must be one of {sorted(SCHEDULES)}, got {schedule!r}")
        if rope_method not in ROPE_METHODS:
            raise ValueError(f"`rope_scaling` must be one of {list(ROPE_METHODS)}, got {rope_method!r}")
        if isinstance(num_images_per_prompt, bool) or not isinstance(num_images_per_prompt, int) \
                or num_images_per_prompt < 1:
            raise ValueError(f"`num_images_per_prompt` must be an integer >= 1, got {num_images_per_prompt!r}")
        if output_type not in ("pil", "pt", "latent"):
            raise ValueError(f"`output_type` must be 'pil', 'pt' or 'latent', got {output_type!r}")
        if seed is not None and generator is not None:
            raise ValueError("pass `seed` or `generator`, not both")

        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        negatives = [n for n in negatives for _ in range(num_images_per_prompt)]
        B = len(prompts)
        guidance = Guidance(cfg, cfg_channels, cfg_renorm, cfg_truncation)
        feats, mask = self.encode_prompts(prompts, negatives if guidance.guided else None)

        tcfg = self.transformer.config
        train_px = self.default_size
        scaling = RopeScaling.for_resolution(rope_method, height, width, train_size=train_px,
                                             scale_watershed=watershed, train_len=tcfg.sample_size // tcfg.patch_size)
        base_seq_len = (tcfg.sample_size // tcfg.patch_size) ** 2 if proportional_attn else None

        transformer = self._transformer(compile)
        n_layers = tcfg.n_layers
        rope_timed = scaling.active and scaling.needs_t
        cd_method = context_drop.method if context_drop is not None else "pool"

        def evaluate(x, t, t_value, feats, mask):
            """The guided velocity at (x, t); t_value: t's host value (None when nothing on the host needs it);
            feats, mask: the caption features of [prompts, negatives] (static buffers under CUDA graphs)."""
            factors = context_drop.factors(t_value, n_layers) if context_drop is not None else None
            kw = dict(base_seq_len=base_seq_len, rope_scaling=scaling, context_drop=factors,
                      context_drop_method=cd_method, t_value=t_value)

            def model(xx, tt):  # 2B rows: [prompts, negatives]; B rows: the prompts alone
                return transformer(xx, tt, feats[:xx.shape[0]], mask[:xx.shape[0]], **kw)

            return guidance.velocity(model, x.to(self.dtype), t, t_value, cond_fn=model)

        def key(t_value):  # every host-side decision the evaluation makes from the time (the pipeline's t: float32)
            return (rope_timed and t_value < scaling.scale_watershed,
                    context_drop.factors(t_value, n_layers) if context_drop is not None else None,
                    guidance.applies(t_value, torch.float32))

        refused = _graphs_refused(cuda_graphs, self.device, scaling)
        run = dict(context_drop=None if context_drop is None else context_drop.spec(), cuda_graphs=refused, nfe=0)
        if refused is None:
            # graphs persist across calls with the same shapes and settings: captured once, replayed ever after.
            # Captions are padded (masked) to a multiple of CAPTION_BUCKET tokens so prompts of similar length share
            # graphs; masked keys add exact zeros to the attention, so the result is unchanged.
            feats, mask = _pad_captions(feats, mask, self.CAPTION_BUCKET)
            signature = (B, tuple(feats.shape), feats.dtype, height, width, guidance, scaling, base_seq_len,
                         context_drop, compile, cuda_graphs, str(self.device))
            velocity = self._graphed(signature, evaluate, key, cuda_graphs == "emulate", feats, mask)
            before = (velocity.captures, velocity.replays)
        else:
            needs_t = rope_timed or context_drop is not None or guidance.needs_time

            def velocity(x, t):
                return evaluate(x, t, float(t.reshape(-1)[0]) if needs_t else None, feats, mask)

        if generator is None:
            seed = int.from_bytes(os.urandom(8), "little") % 2**63 if seed is None else seed
            generator = torch.Generator().manual_seed(seed)
        ds = self.codec.downscale
        shape = (B, tcfg.in_channels, height // ds, width // ds)
        x0 = torch.randn(shape, generator=generator, dtype=torch.float32).to(self.device)
        stats: dict = {}
        latents = sample(velocity, x0, steps=steps, solver=solver, schedule=schedule, shift=shift,
                         progress=progress, callback=callback, stats=stats, **(schedule_params or {}))
        run["nfe"] = stats.get("nfe", 0)
        if isinstance(velocity, GraphedVelocity):
            run["cuda_graphs"] = ({"captures": velocity.captures - before[0], "replays": velocity.replays - before[1],
                                   "graphs": velocity.captures}
                                  if velocity.disabled is None else f"capture failed: {velocity.disabled}")
        self.last_run = run
        if output_type == "latent":
            return latents
        images = self.codec.decode(latents.float())
        return images if output_type == "pt" else to_pil(images)

    def _graphed(self, signature: tuple, evaluate, key, emulate: bool, *inputs: torch.Tensor) -> GraphedVelocity:
        """The kept GraphedVelocity of this call signature (new if none; the least recently used one dropped),
        re-bound to this call's evaluation and inputs."""
        velocity = self._graph_cache.pop(signature, None)
        if velocity is None:
            velocity = GraphedVelocity(evaluate, key, emulate=emulate)
        self._graph_cache[signature] = velocity  # most recent last
        while len(self._graph_cache) > self.GRAPH_CACHE_SIZE:
            self._graph_cache.pop(next(iter(self._graph_cache)))
        velocity.fn = evaluate
        velocity.set_inputs(*inputs)
        return velocity


def _pad_captions(feats: torch.Tensor, mask: torch.Tensor, bucket: int):
    """Pad (B, L, D) caption features with zeros and their (B, L) mask with False up to a multiple of `bucket`."""
    L = feats.shape[1]
    pad = -L % bucket
    if pad == 0:
        return feats, mask
    feats = torch.nn.functional.pad(feats, (0, 0, 0, pad))
    mask = torch.nn.functional.pad(mask, (0, pad), value=False)
    return feats, mask


def _graphs_refused(cuda_graphs, device: torch.device, scaling: RopeScaling) -> str | None:
    """None when CUDA graphs will be used, else why not (ValueError when they were required)."""
    if cuda_graphs not in (None, True, False, "emulate"):
        raise ValueError(f"`cuda_graphs` must be None (auto), True, False or 'emulate', got {cuda_graphs!r}")
    if cuda_graphs is False:
        return "off (cuda_graphs=False)"
    reason = None
    if cuda_graphs != "emulate" and device.type != "cuda":
        reason = f"the device is {device.type}, not cuda"
    elif scaling.active and scaling.method == "smooth_time_aware":
        reason = "RoPE scaling 'smooth_time_aware' builds a new table at every t"
    if reason is not None and cuda_graphs is True:
        raise ValueError(f"`cuda_graphs=True` but CUDA graphs cannot be used: {reason}")
    return reason


# ------------------------------------------------------------------------------------------------
# lumina.generate
# ------------------------------------------------------------------------------------------------
_PIPELINES: dict[tuple, LuminaPipeline] = {}
DEFAULT_MODEL_ENV = "LUMINA_MODEL"


def default_model_path() -> Path | None:
    """The model `generate` uses without `model=`: $LUMINA_MODEL, else the model bundled with the package."""
    env = os.environ.get(DEFAULT_MODEL_ENV)
    if env:
        return Path(env)
    bundled = Path(__file__).resolve().parent.parent / "assets" / "default_model"
    return bundled if bundled.is_dir() else None


def load_pipeline(model=None, *, text_encoder=None, vae=None, lora=None, lora_scale: float = 1.0, dtype=None,
                  device=None, ema: bool = True, cache: bool = True) -> LuminaPipeline:
    """A pipeline for `model` (a directory; default :func:`default_model_path`), cached per arguments."""
    if model is None:
        model = default_model_path()
        if model is None:
            raise ValueError("no model given and no default model found: pass `model=` (a pipeline directory) "
                             f"or set ${DEFAULT_MODEL_ENV}")
    key = (str(Path(os.fspath(model)).resolve()), str(text_encoder), str(vae), str(lora), lora_scale, str(dtype),
           str(device), ema)
    if cache and key in _PIPELINES:
        return _PIPELINES[key]
    pipe = LuminaPipeline.from_pretrained(model, text_encoder=text_encoder, vae=vae, lora=lora, lora_scale=lora_scale,
                                          ema=ema, dtype=dtype, device=device)
    if cache:
        _PIPELINES.clear()  # keep one model in memory
        _PIPELINES[key] = pipe
    return pipe


def generate(prompt: str | list[str], negative_prompt: str | list[str] = "", *, model=None, text_encoder=None,
             vae=None, lora=None, lora_scale: float = 1.0, dtype: torch.dtype | None = None, device=None,
             ema: bool = True, **kwargs) -> list[Image.Image]:
    """Text to images in one call: loads (and caches) the pipeline of `model`, then runs it.

    ``model``: a pipeline directory (default: $LUMINA_MODEL or the bundled model); ``text_encoder``, ``vae``,
    ``lora``, ``lora_scale``, ``dtype``, ``device``, ``ema`` as :meth:`LuminaPipeline.from_pretrained`; every other keyword argument as
    :meth:`LuminaPipeline.__call__` (height, width, steps, solver, schedule, shift, cfg, seed, ...).
    """
    pipe = load_pipeline(model, text_encoder=text_encoder, vae=vae, lora=lora, lora_scale=lora_scale, dtype=dtype,
                         device=device, ema=ema)
    return pipe(prompt, negative_prompt, **kwargs)
