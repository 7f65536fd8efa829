"""Text-to-image with Next-DiT: a thin :class:`lumina.pipelines.base.FlowPipeline` for the "image" modality.

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

from ..pipeline_dir import GenerationDefaults, PipelineConfig
from .base import FlowPipeline, as_prompts, register_pipeline
from .results import ImageResult

__all__ = ["LuminaPipeline", "PipelineConfig", "GenerationDefaults"]


@register_pipeline
class LuminaPipeline(FlowPipeline):
    """Text to images: ``pipe(prompt, ...)`` returns an :class:`ImageResult` (a list of PIL images with ``.save``)."""

    modality = "image"
    result_type = ImageResult

    @property
    def multiple(self) -> int:
        """Height and width must be multiples of this: codec downscale x patch size (16 for Lumina-Next)."""
        return self.codec.downscale * self.transformer.config.patch_size

    @property
    def default_size(self) -> int:
        """The training resolution in pixels (sample_size latents x codec downscale; 1024 for Lumina-Next)."""
        return self.train_extent

    def check_size(self, height: int, width: int) -> None:
        m = self.multiple
        for name, v in (("height", height), ("width", width)):
            if isinstance(v, bool) or not isinstance(v, int) or v < m or v % m:
                raise ValueError(f"`{name}` must be a positive multiple of {m} (VAE downscale "
                                 f"{self.codec.downscale} x patch {self.transformer.config.patch_size}), got {v!r}")

    def __call__(self, prompt: str | list[str], negative_prompt: str | list[str] = "", *, height: int | None = None,
                 width: int | None = None, size=None, num_images_per_prompt: int = 1, output_type: str = "pil",
                 **kwargs):
        """Generate images for `prompt` (a string or a list: a batch).

        * ``height`` / ``width`` (or ``size=(height, width)``): pixels, multiples of :attr:`multiple` (16 for Lumina-Next); default the config's
          ``defaults.size``, else the training size. Larger sizes extrapolate with ``rope_scaling`` (one of
          ``lumina.models.rope.METHODS``; the official ``time_aware`` switch at ``scale_watershed`` by default;
          scale ``s = sqrt(H W) / training size``, active only when ``s > 1``) and proportional attention
          (``proportional_attn``).
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
          are copied into the graphs' static inputs (padded and masked to a multiple of :attr:`CAPTION_BUCKET`
          tokens, which changes nothing in the result). ``compile``: run the transformer under ``torch.compile``
          (``True`` = inductor, or a backend name); compiled once per pipeline.
        * after a call, :attr:`last_run` holds what was used (context drop spec, graphs captured and replayed, or
          why graphs were refused, model evaluations).
        * ``seed`` or ``generator`` (a CPU generator): the initial noise is drawn on the CPU, so a seed gives the same
          image on every device. ``num_images_per_prompt`` images for each prompt.
        * ``output_type``: ``"pil"`` (an :class:`ImageResult`: a list of PIL images with ``.save(path)``), ``"pt"``
          (float images in [0, 1], (B, 3, H, W)) or ``"latent"`` (the final latents).
        """
        if output_type not in ("pil", "pt", "latent"):
            raise ValueError(f"`output_type` must be 'pil', 'pt' or 'latent', got {output_type!r}")
        if isinstance(num_images_per_prompt, bool) or not isinstance(num_images_per_prompt, int) \
                or num_images_per_prompt < 1:
            raise ValueError(f"`num_images_per_prompt` must be an integer >= 1, got {num_images_per_prompt!r}")
        prompts = as_prompts(prompt, "prompt")
        negatives = as_prompts(negative_prompt, "negative_prompt")
        if size is not None:
            if height is not None or width is not None:
                raise ValueError("pass `size` or `height` / `width`, not both")
            if not isinstance(size, (list, tuple)) or len(size) != 2:
                raise ValueError(f"`size` of an image must be (height, width), got {size!r}")
            height, width = size
        default = self.default_sample_size()
        height = default[0] if height is None else height
        width = default[1] if width is None else width
        self.check_size(height, width)
        return self.generate_samples(prompts, negatives, (height, width), num_images_per_prompt,
                                     output_type="result" if output_type == "pil" else output_type, **kwargs)
