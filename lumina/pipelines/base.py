"""The flow pipeline of every modality: encode the condition -> noise per sample from the seed -> sample the flow
ODE with guidance -> decode -> the modality's result.

:class:`FlowPipeline` holds a :class:`lumina.models.NextDiT` of any modality (its adapter turns samples into
tokens), the condition encoder (a text encoder; None for an unconditional model) and the codec. The modality's
pipeline (:mod:`.text_to_image`, :mod:`.text_to_sequence`, :mod:`.text_to_volume`) is a thin subclass naming its
result type and the sizes it takes; :func:`pipeline_class` finds it from the model's modality.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .._checks import device as checked_device
from .._paths import resolve_path
from ..codecs import LatentCodec, load_codec
from ..conditioning import TextEncoder
from ..conditioning.vocabulary import warn_unknown
from ..memory import check_fits, generation_bytes
from ..models.lora import merge_lora
from ..models.nextdit import NextDiT
from ..models.rope import METHODS as ROPE_METHODS
from ..models.rope import RopeScaling
from ..pipeline_dir import PipelineConfig
from ..sampling import SCHEDULES, SOLVERS, ContextDrop, GraphedVelocity, Guidance, sample
from ..sampling.graphs import graphs_refused, pad_context
from . import results

__all__ = ["FlowPipeline", "Settings", "NonFiniteError", "pipeline_class", "register_pipeline"]


class NonFiniteError(FloatingPointError):
    """The model produced NaN or inf: the message names where and the likely cause; nothing is saved."""

_PIPELINE_CLASSES: dict[str, type] = {}


def register_pipeline(cls: type) -> type:
    """Class decorator: the pipeline of ``cls.modality``."""
    _PIPELINE_CLASSES[cls.modality] = cls
    return cls


def pipeline_class(modality: str) -> type:
    if modality not in _PIPELINE_CLASSES:
        raise ValueError(f"no pipeline for the modality {modality!r}; pipelines exist for {sorted(_PIPELINE_CLASSES)}")
    return _PIPELINE_CLASSES[modality]


def _default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def as_prompts(value, name: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"`{name}` must be a string or a non-empty list of strings, got {value!r}")


@dataclass(frozen=True)
class Settings:
    """The sampling settings of one call, defaults filled in and checked."""

    steps: int
    solver: str
    schedule: str
    shift: float
    schedule_params: tuple
    guidance: Guidance
    scaling: RopeScaling
    base_seq_len: int | None
    context_drop: ContextDrop | None
    cuda_graphs: bool | str | None
    compile: bool | str


class FlowPipeline:
    """Generation with a NextDiT, a condition encoder and a codec; ``pipe(prompt, ...)`` returns the modality's
    result (see :meth:`__call__`)."""

    modality: str | None = None  # the subclass's modality (None: the base class, any)
    result_type: type = results.SequenceResult
    channel_axis = 1  # the channel dim of a batched latent (the official cfg_channels quirk guides along it)
    GRAPH_CACHE_SIZE = 4  # GraphedVelocity objects kept (each holds its graphs and their memory pool)
    CAPTION_BUCKET = 64  # with CUDA graphs, caption lengths are padded to a multiple of this

    def __init__(self, transformer: NextDiT, text_encoder, codec: LatentCodec, config: PipelineConfig | None = None):
        tcfg = transformer.config
        if self.modality is not None and tcfg.modality != self.modality:
            raise ValueError(f"{type(self).__name__} runs {self.modality!r} models; the transformer's modality is "
                             f"{tcfg.modality!r} (use lumina.pipelines.pipeline_class({tcfg.modality!r}))")
        self.transformer = transformer.eval()
        self.text_encoder = text_encoder
        self.codec = codec
        self.config = config or PipelineConfig()
        self.last_run: dict = {}  # what the last call used (see __call__)
        self._graph_cache: dict = {}  # call signature -> GraphedVelocity (CUDA graphs kept across calls)
        if tcfg.context_dim is None:
            if text_encoder is not None:
                raise ValueError("the transformer has no cross-attention (context_dim None) but a text encoder "
                                 "was given")
        elif text_encoder is None:
            raise ValueError(f"the transformer cross-attends to {tcfg.context_dim}-d context: a text encoder is "
                             "required")
        elif text_encoder.dim != tcfg.context_dim:
            raise ValueError(f"text-feature dim mismatch: the text encoder gives {text_encoder.dim}-d features but "
                             f"the transformer expects context_dim={tcfg.context_dim}")
        if codec.latent_channels != tcfg.in_channels:
            raise ValueError(f"latent channel mismatch: the {type(codec).__name__} has {codec.latent_channels} "
                             f"channels but the transformer expects in_channels={tcfg.in_channels}")

    # -- loading ---------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path, *, text_encoder=None, vae=None, lora=None, lora_scale: float = 1.0,
                        ema: bool = True, dtype: torch.dtype | None = None, device=None) -> "FlowPipeline":
        """Load a pipeline directory (see :mod:`lumina.pipeline_dir`); on the base class, the pipeline of the
        model's modality.

        ``text_encoder`` / ``vae``: directories that override ``path/text_encoder`` and ``path/vae`` (use them with an
        official weights-only folder); ``vae="pixel"`` for a pixel-space model. ``dtype`` of the transformer and
        text encoder (default bf16 on CUDA, fp32 on CPU); the codec always runs in fp32. ``ema``: EMA weights of an
        official checkpoint (the default, as the official samplers). ``lora``: a LoRA adapter directory (written
        by ``lumina train``) merged into the transformer's weights, times ``lora_scale``.
        """
        root = Path(os.fspath(path)).expanduser()
        if root.is_file():
            raise FileNotFoundError(f"the model {str(root)!r} is a file; expected a pipeline directory")
        if not root.is_dir():
            raise FileNotFoundError(f"pipeline directory {str(root)!r} does not exist")
        device = checked_device(device)
        dtype = dtype or _default_dtype(device)
        config = PipelineConfig.load(root)
        transformer = cls._load_transformer(root, config, lora, lora_scale, ema).to(device=device, dtype=dtype)
        if cls.modality is None:
            cls = pipeline_class(transformer.config.modality)
        encoder = None
        if transformer.config.context_dim is not None:
            encoder = cls._load_text_encoder(root, config, text_encoder, dtype, device)
        codec = cls._load_codec(root, config, vae, transformer.config.in_channels, device)
        return cls(transformer, encoder, codec, config)

    @staticmethod
    def _load_transformer(root: Path, config: PipelineConfig, lora, lora_scale: float, ema: bool) -> NextDiT:
        t_dir = resolve_path(config.transformer, root) if config.transformer else root
        merging = bool(lora is not None or config.lora)
        transformer = NextDiT.from_pretrained(t_dir, ema=ema, dtype=torch.float32 if merging else None)
        for adapter in (resolve_path(config.lora, root) if config.lora else None,
                        Path(os.fspath(lora)).expanduser() if lora is not None else None):
            if adapter is not None:
                merge_lora(transformer, adapter, scale=lora_scale)
        return transformer

    @staticmethod
    def _load_text_encoder(root: Path, config: PipelineConfig, text_encoder, dtype, device) -> TextEncoder:
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
        return TextEncoder.from_pretrained(te_dir, dtype=dtype, device=device, layer=config.text_layer,
                                           max_length=config.max_length, tokenizer_path=tok_dir)

    @staticmethod
    def _load_codec(root: Path, config: PipelineConfig, vae, channels: int, device) -> LatentCodec:
        kind = "pixel" if vae == "pixel" else "vae" if vae is not None else config.codec
        if kind != "vae":
            return load_codec(kind, config.pixel_channels, device=device)
        vae_dir = (Path(os.fspath(vae)).expanduser() if vae is not None
                   else resolve_path(config.vae, root) if config.vae else root / "vae")
        if not (vae_dir / "config.json").is_file():
            raise FileNotFoundError(f"no VAE: expected a diffusers AutoencoderKL directory at {str(vae_dir)!r}, "
                                    f"or pass `vae=` (a directory, or 'pixel' for a pixel-space model)")
        return load_codec("vae", vae_dir=vae_dir, device=device)

    def save_pretrained(self, path, format: str = "native") -> None:
        """Write transformer/ (native; official or diffusers for text to image), text_encoder/ (with its tokenizer),
        vae/ and the pipeline config, so that :meth:`from_pretrained` reads them back."""
        root = Path(os.fspath(path)).expanduser()
        root.mkdir(parents=True, exist_ok=True)
        state = self.transformer.state_dict()  # the weights to sample with: written as the EMA weights too
        self.transformer.save_pretrained(root / "transformer", format=format, ema_state=state)
        if self.text_encoder is not None:
            self.text_encoder.save_pretrained(root / "text_encoder")
        vae = getattr(self.codec, "vae", None)
        if vae is not None:
            vae.save_pretrained(root / "vae")
        self.config.save(root)

    # -- properties --------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.transformer.x_embedder.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.x_embedder.weight.dtype

    @property
    def adapter(self):
        return self.transformer.adapter

    @property
    def train_extent(self) -> int:
        """The training extent of a scaled axis in sample units (sample_size latents x codec downscale)."""
        return self.transformer.config.sample_size * self.codec.downscale

    def default_sample_size(self) -> tuple[int, ...]:
        """The size a call without one generates: the config's ``defaults.size``, else the training extent on every
        scaled axis (a modality with unscaled axes needs ``defaults.size`` or an explicit size)."""
        if self.config.defaults.size is not None:
            return tuple(self.config.defaults.size)
        if not all(self.adapter.scaled_axes):
            raise ValueError(f"`size` is required for the {self.transformer.config.modality!r} modality (its "
                             f"pipeline config has no defaults.size)")
        return (self.train_extent,) * len(self.adapter.scaled_axes)

    def latent_shape(self, size) -> tuple[int, ...]:
        """One sample's latent for ``size`` (sample units); ValueError naming the axis unless it fits."""
        return self.adapter.latent_shape(tuple(size), self.codec.downscale)

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

    @torch.inference_mode()
    def encode_prompts(self, prompts: list[str], negative: list[str] | None):
        """Caption features and masks for [prompts, negative prompts] in one padded batch (as the official code);
        (None, None) for an unconditional model."""
        if self.text_encoder is None:
            return None, None
        warn_unknown(prompts + [q for q in negative or [] if q], self.config.vocabulary)
        feats, mask = self.text_encoder.encode(prompts + (negative or []))
        return feats.to(self.device, self.dtype), mask.to(self.device)

    def settings(self, size: tuple[int, ...], *, steps=None, solver=None, schedule=None, shift=None,
                 schedule_params=None, cfg=None, cfg_channels=None, cfg_renorm=None, cfg_truncation=None,
                 rope_scaling=None, scale_watershed=None, proportional_attn=None, context_drop=None,
                 cuda_graphs=None, compile=False) -> Settings:
        """The call's :class:`Settings`: each None takes the pipeline config's default; ValueError naming a bad
        argument."""
        d = self.config.defaults
        solver = d.solver if solver is None else solver
        schedule = d.schedule if schedule is None else schedule
        rope_method = d.rope_scaling if rope_scaling is None else rope_scaling
        if not isinstance(solver, str) or solver not in SOLVERS:
            raise ValueError(f"`solver` must be one of {sorted(SOLVERS)}, got {solver!r}")
        if not isinstance(schedule, str) or schedule not in SCHEDULES:
            raise ValueError(f"`schedule` must be one of {sorted(SCHEDULES)}, got {schedule!r}")
        if rope_method not in ROPE_METHODS:
            raise ValueError(f"`rope_scaling` must be one of {list(ROPE_METHODS)}, got {rope_method!r}")
        if self.text_encoder is None:
            if cfg is not None and cfg != 1:
                raise ValueError(f"`cfg` = {cfg!r} needs a conditional model; this one has no condition encoder")
            cfg = 1.0
        if cfg_channels is not None and self.channel_axis != 1:
            raise ValueError(f"`cfg_channels` guides latent channels along dim 1; the {self.modality!r} latents "
                             f"keep channels in dim {self.channel_axis}")
        try:
            guidance = Guidance(d.cfg if cfg is None else cfg, cfg_channels, cfg_renorm, cfg_truncation)
        except ValueError as e:  # Guidance's names are cfg_velocity's; the call's are cfg_*
            msg = str(e)
            for a, b in (("`cfg_scale`", "`cfg`"), ("`channels`", "`cfg_channels`"), ("`renorm`", "`cfg_renorm`"),
                         ("`truncation`", "`cfg_truncation`")):
                msg = msg.replace(a, b)
            raise ValueError(msg) from None
        if guidance.channels is not None and guidance.channels > self.transformer.config.in_channels:
            raise ValueError(f"`cfg_channels` = {guidance.channels} exceeds the model's "
                             f"{self.transformer.config.in_channels} latent channels")
        context_drop = ContextDrop.parse(d.context_drop if context_drop is None else context_drop)
        if context_drop is not None:
            context_drop.check_layers(self.transformer.config.n_layers)
        if compile not in (False, None, True) and (not isinstance(compile, str) or compile not in _backends()):
            raise ValueError(f"`compile` must be a bool or a torch.compile backend ({', '.join(_backends())}), "
                             f"got {compile!r}")
        proportional_attn = d.proportional_attn if proportional_attn is None else proportional_attn
        return Settings(steps=d.steps if steps is None else steps, solver=solver, schedule=schedule,
                        shift=d.shift if shift is None else shift,
                        schedule_params=tuple(sorted((schedule_params or {}).items())), guidance=guidance,
                        scaling=self._rope_scaling(rope_method, size,
                                                   d.scale_watershed if scale_watershed is None else scale_watershed),
                        base_seq_len=self._base_seq_len(size) if proportional_attn else None,
                        context_drop=context_drop,
                        cuda_graphs=cuda_graphs, compile=compile)

    def _rope_scaling(self, method: str, size: tuple[int, ...], watershed: float) -> RopeScaling:
        """s = the geometric mean over the scaled axes of size / training extent (image: sqrt(H W) / train)."""
        tcfg = self.transformer.config
        scaled = [v for v, on in zip(size, self.adapter.scaled_axes) if on]
        extent = math.prod(scaled)
        root = math.sqrt(extent) if len(scaled) == 2 else extent ** (1 / len(scaled))
        return RopeScaling(method=method, scale=root / self.train_extent, scale_watershed=watershed,
                           train_len=tcfg.sample_size // tcfg.patch_size)

    def _base_seq_len(self, size: tuple[int, ...]) -> int:
        """Proportional attention's training token count: the training extent on scaled axes, this size's on the
        others (the frames of a volume)."""
        tcfg = self.transformer.config
        grid = self.adapter.token_grid(self.latent_shape(size))
        train = tcfg.sample_size // tcfg.patch_size
        return math.prod(train if on else g for g, on in zip(grid, self.adapter.scaled_axes))

    @torch.inference_mode()
    def generate_samples(self, prompts: list[str] | None, negatives: list[str] | None, size: tuple[int, ...],
                         n_per_prompt: int = 1, *, seed: int | None = None, generator: torch.Generator | None = None,
                         output_type: str = "result", progress: bool = True,
                         callback: Callable[[int, float, torch.Tensor], None] | None = None, **options):
        """The shared generation (see :meth:`__call__`). ``prompts`` None: an unconditional batch of
        ``n_per_prompt`` samples; ``options``: the keyword arguments of :meth:`settings`."""
        size = tuple(size)
        latent = self.latent_shape(size)
        s = self.settings(size, **options)
        if isinstance(n_per_prompt, bool) or not isinstance(n_per_prompt, int) or n_per_prompt < 1:
            raise ValueError(f"`num_samples_per_prompt` must be an integer >= 1, got {n_per_prompt!r}")
        if output_type not in ("result", "pt", "latent"):
            raise ValueError(f"`output_type` must be 'result', 'pt' or 'latent', got {output_type!r}")
        if seed is not None and generator is not None:
            raise ValueError("pass `seed` or `generator`, not both")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63):
            raise ValueError(f"`seed` must be an integer in [0, 2^63), got {seed!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"`generator` must be a torch.Generator, got {type(generator).__name__}")
        prompts, negatives = self._batch(prompts, negatives, n_per_prompt)
        B = len(prompts)
        self.check_memory(B, size, latent)
        feats, mask = self.encode_prompts(prompts, negatives if s.guidance.guided else None)
        velocity, run = self._velocity(s, B, size, feats, mask)
        latents = self._sample(velocity, s, (B, *latent), seed, generator, progress, _checked_first(callback, self),
                               run)
        self.last_run = run
        if not bool(torch.isfinite(latents).all()):
            raise NonFiniteError(f"the sampled latents hold NaN or inf: {self.non_finite_cause()}")
        if output_type == "latent":
            return latents
        decoded = self.codec.decode(latents.float())
        return decoded if output_type == "pt" else self.result_type.from_samples(decoded, self.config)

    def check_memory(self, batch: int, size: tuple[int, ...], latent: tuple[int, ...]) -> None:
        """MemoryEstimateError naming the size when the call's estimate exceeds 90% of the free memory."""
        tokens = math.prod(self.adapter.token_grid(latent))
        ctx = getattr(self.text_encoder, "max_length", 0) if self.text_encoder is not None else 0
        need = generation_bytes(self.transformer.config, batch, math.prod(latent), tokens, ctx, self.dtype,
                                math.prod(size) * max(3, self.codec.latent_channels))
        check_fits(need, self.device, f"generating {batch} sample(s) of size {'x'.join(map(str, size))}")

    def non_finite_cause(self) -> str:
        """The likely cause of a NaN / inf output, for the error message."""
        bad = [n for n, p in self.transformer.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            return (f"the transformer's weights hold NaN or inf ({len(bad)} tensors, e.g. {bad[0]}): a corrupt "
                    "checkpoint, or a LoRA merged with a bad scale")
        if self.dtype == torch.float16:
            return "float16 overflowed: run in bfloat16 or float32 (`dtype=`, `--dtype`)"
        return f"the model diverged in {self.dtype} (weights finite): check the checkpoint, cfg and solver settings"

    def _batch(self, prompts, negatives, n: int) -> tuple[list[str], list[str]]:
        """Prompts and negatives repeated n times each (an unconditional model: n empty prompts)."""
        if prompts is None:
            if self.text_encoder is not None:
                raise ValueError("`prompt` is required: the model is conditioned on text")
            return [""] * n, [""] * n
        if self.text_encoder is None:
            raise ValueError("the model is unconditional (no text encoder): pass `prompt=None`")
        negatives = negatives or [""]
        if len(negatives) == 1:
            negatives = negatives * len(prompts)
        if len(negatives) != len(prompts):
            raise ValueError(f"`negative_prompt` must be one string or one per prompt ({len(prompts)}), "
                             f"got {len(negatives)}")
        return [p for p in prompts for _ in range(n)], [q for q in negatives for _ in range(n)]

    def _velocity(self, s: Settings, B: int, size: tuple, feats, mask):
        """The velocity function of the solver (eager, or replaying CUDA graphs) and the run record."""
        transformer = self._transformer(s.compile)
        n_layers = self.transformer.config.n_layers
        rope_timed = s.scaling.active and s.scaling.needs_t
        cd, guidance = s.context_drop, s.guidance

        def evaluate(x, t, t_value, feats=None, mask=None):
            """The guided velocity at (x, t); t_value: t's host value (None when nothing on the host needs it);
            feats, mask: the caption features of [prompts, negatives] (static buffers under CUDA graphs)."""
            kw = dict(base_seq_len=s.base_seq_len, rope_scaling=s.scaling, t_value=t_value,
                      context_drop=cd.factors(t_value, n_layers) if cd is not None else None,
                      context_drop_method=cd.method if cd is not None else "pool")

            def model(xx, tt):  # 2B rows: [prompts, negatives]; B rows: the prompts alone
                if feats is None:
                    return transformer(xx, tt, **kw)
                return transformer(xx, tt, feats[:xx.shape[0]], mask[:xx.shape[0]], **kw)

            return guidance.velocity(model, x.to(self.dtype), t, t_value, cond_fn=model)

        def key(t_value):  # every host-side decision the evaluation makes from the time (the pipeline's t: float32)
            return (rope_timed and t_value < s.scaling.scale_watershed,
                    cd.factors(t_value, n_layers) if cd is not None else None,
                    guidance.applies(t_value, torch.float32))

        refused = graphs_refused(s.cuda_graphs, self.device, s.scaling)
        run = dict(context_drop=None if cd is None else cd.spec(), cuda_graphs=refused, nfe=0)
        if refused is None:
            # graphs persist across calls with the same shapes and settings: captured once, replayed ever after.
            # Captions are padded (masked) to a multiple of CAPTION_BUCKET tokens so prompts of similar length share
            # graphs; masked keys add exact zeros to the attention, so the result is unchanged.
            inputs = () if feats is None else pad_context(feats, mask, self.CAPTION_BUCKET)
            signature = (B, tuple(inputs[0].shape) if inputs else (), self.dtype, size, guidance, s.scaling,
                         s.base_seq_len, cd, s.compile, s.cuda_graphs, str(self.device))
            velocity = self._graphed(signature, evaluate, key, s.cuda_graphs == "emulate", *inputs)
            run["_before"] = (velocity.captures, velocity.replays)
            return velocity, run
        needs_t = rope_timed or cd is not None or guidance.needs_time

        def velocity(x, t):
            return evaluate(x, t, float(t.reshape(-1)[0]) if needs_t else None, feats, mask)

        return velocity, run

    def _sample(self, velocity, s: Settings, shape: tuple, seed, generator, progress, callback, run: dict):
        """The initial noise (drawn on the CPU from the seed: the same sample on every device) through the solver."""
        if generator is None:
            seed = int.from_bytes(os.urandom(8), "little") % 2**63 if seed is None else seed
            generator = torch.Generator().manual_seed(seed)
        x0 = torch.randn(shape, generator=generator, dtype=torch.float32).to(self.device)
        stats: dict = {}
        latents = sample(velocity, x0, steps=s.steps, solver=s.solver, schedule=s.schedule, shift=s.shift,
                         progress=progress, callback=callback, stats=stats, **dict(s.schedule_params))
        run["nfe"] = stats.get("nfe", 0)
        before = run.pop("_before", None)
        if isinstance(velocity, GraphedVelocity):
            run["cuda_graphs"] = ({"captures": velocity.captures - before[0], "replays": velocity.replays - before[1],
                                   "graphs": velocity.captures}
                                  if velocity.disabled is None else f"capture failed: {velocity.disabled}")
        return latents

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

    def __call__(self, prompt: str | list[str] | None = None, negative_prompt: str | list[str] = "", *,
                 size=None, num_samples_per_prompt: int = 1, output_type: str = "result", **kwargs):
        """Generate for ``prompt`` (a string or a list: a batch; None for an unconditional model).

        ``size``: the sample size in sample units along the modality's position axes (image (H, W) pixels,
        sequence (T,), volume (F, H, W)); default :meth:`default_sample_size`. Every other keyword as
        :meth:`lumina.pipelines.LuminaPipeline.__call__` (steps, solver, schedule, shift, schedule_params, cfg,
        cfg_channels, cfg_renorm, cfg_truncation, rope_scaling, scale_watershed, proportional_attn, context_drop,
        cuda_graphs, compile, seed, generator, progress, callback). ``output_type``: "result" (the modality's
        result type, with ``.save(path)``), "pt" (decoded samples) or "latent".
        """
        prompts = None if prompt is None else as_prompts(prompt, "prompt")
        negatives = as_prompts(negative_prompt, "negative_prompt") if prompts is not None else None
        size = self.default_sample_size() if size is None else _size(size)
        return self.generate_samples(prompts, negatives, size, num_samples_per_prompt, output_type=output_type,
                                     **kwargs)


def _backends() -> list[str]:
    import torch._dynamo

    return sorted(torch._dynamo.list_backends(exclude_tags=()))


def _checked_first(callback, pipe: "FlowPipeline"):
    """The solver callback, with the state after the first step checked for NaN / inf (one host read per call,
    cheap) so a broken model fails at its first evaluation instead of after the whole run."""
    def checked(i, t, x):
        if i == 0 and not bool(torch.isfinite(x).all()):
            raise NonFiniteError(f"the first solver step (the first model outputs) gave NaN or inf: "
                                 f"{pipe.non_finite_cause()}")
        if callback is not None:
            callback(i, t, x)

    return checked


def _size(size) -> tuple[int, ...]:
    if isinstance(size, int) and not isinstance(size, bool):
        return (size,)
    if isinstance(size, (list, tuple)) and size and all(isinstance(v, int) and not isinstance(v, bool) for v in size):
        return tuple(size)
    raise ValueError(f"`size` must be an int or a list of ints (the sample size per axis), got {size!r}")
