"""Task 3's model: the full Qwen2.5-VL (LoRA'd anywhere), Task 1's heads on its vision tower, and
soft tokens made from the heads' output that the language model reads after the image (SPEC 3, 6.2).

One forward of :class:`HybridModel` is one forward of the Qwen2.5-VL model: the vision tower runs
once, inside it, and the feature tap collects the blocks the heads read. The soft tokens depend on
the heads, so they can only be made after the vision tower ran; but ``Qwen2_5_VLModel.forward``
looks up the token embeddings *before* it runs the tower, so a hook on the embedding layer would
fire too early. The injection therefore hooks the next point in the forward: the call of the text
decoder (``model.model.language_model``), which receives ``inputs_embeds`` with the image features
already scattered in. There the heads run on the tapped features, the fusion projector turns their
output into soft tokens, and the embeddings at the reserved slots are replaced. ``input_ids`` stay
what the processor made (slots included), so the mRoPE positions are the model's own: 2-D for
the image, consecutive text positions for the slots (trap 6.2 avoided without re-implementing
``get_rope_index``). The collator computes them on the host with transformers' ``get_rope_index``
(``model.mrope``) and they reach the base model through ``model_kwargs`` as ``position_ids``; a batch
without them gets the same positions from the model's forward.

Slot token: ``<|vision_pad|>``. It is one of Qwen2.5-VL's own special tokens, so the tokenizer keeps
a run of N of them as exactly N tokens and the chat template never emits it; it is neither the
image nor the video placeholder, so the processor marks it as text and the model scatters no vision
features into it. Its embedding is never seen by the LM: every slot is overwritten.

The optional head verdict ("Head Predict Prompt Tokens") is a short sentence in the prompt whose
answer word is written in the prompt as the real word; during the forward, rows whose head says
fake (P >= 0.5) get the embedding of the fake word at that position instead. The two words must
differ in exactly one token in that context (checked when the prompt is built).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.utils import ModelOutput

from qwen_forensics.model.heads import ForensicHeads
from qwen_forensics.model.loader import get_language_model, get_visual
from qwen_forensics.model.lora import inject_hybrid_lora
from qwen_forensics.model.tap import ViTFeatureTap
from qwen_forensics.prompts import prompt_text_for

__all__ = [
    "SLOT_TOKEN",
    "VERDICT_TEMPLATE",
    "FusionProjector",
    "HybridModel",
    "HybridOutput",
    "HybridPrompt",
    "head_statistics",
    "embedding_rms",
]

SLOT_TOKEN = "<|vision_pad|>"
VERDICT_TEMPLATE = "The forensic detector's verdict: {word}.\n"
NUM_HEAD_STATS = 4


def head_statistics(cls_logit: torch.Tensor, heatmap_logit: torch.Tensor) -> torch.Tensor:
    """[B, 4]: cls probability, cls logit, mean and max of the heatmap probability."""
    heat = torch.sigmoid(heatmap_logit.float()).flatten(1)
    logit = cls_logit.float()
    return torch.stack([torch.sigmoid(logit), logit, heat.mean(1), heat.amax(1)], dim=1)


def embedding_rms(model: nn.Module) -> float:
    """Root mean square of the LM's token embedding table (the scale soft tokens are given)."""
    weight = model.get_input_embeddings().weight
    return float(weight.detach().float().pow(2).mean().sqrt())


class FusionProjector(nn.Module):
    """Pooled head features + head statistics -> ``num_tokens`` soft tokens of the LM's width.

    The pooled features are layer-normed (their scale drifts while the heads train); the four
    statistics enter as they are. An MLP makes all tokens at once; each token is RMS-normalised and
    scaled by a learned per-channel gain that starts at the RMS of the LM's word embeddings, so at
    initialisation the soft tokens have the magnitude the LM expects from its inputs.
    """

    def __init__(self, pooled_dim: int, hidden_size: int, num_tokens: int, *, hidden: int | None = None,
                 dropout: float = 0.1, embed_rms: float = 1.0):
        super().__init__()
        if num_tokens < 1:
            raise ValueError(f"FusionProjector needs num_tokens >= 1, got {num_tokens}; with fusion_tokens = 0 "
                             "the hybrid model has no projector")
        if pooled_dim < 1 or hidden_size < 1 or embed_rms <= 0:
            raise ValueError(f"invalid FusionProjector sizes pooled_dim={pooled_dim}, hidden_size={hidden_size}, "
                             f"embed_rms={embed_rms}")
        hidden = int(hidden or pooled_dim)
        self.config = {"pooled_dim": int(pooled_dim), "hidden_size": int(hidden_size), "num_tokens": int(num_tokens),
                       "hidden": hidden, "dropout": float(dropout), "embed_rms": float(embed_rms)}
        self.num_tokens = int(num_tokens)
        self.hidden_size = int(hidden_size)
        self.norm = nn.LayerNorm(pooled_dim)
        self.mlp = nn.Sequential(
            nn.Linear(pooled_dim + NUM_HEAD_STATS, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_tokens * hidden_size),
        )
        self.gain = nn.Parameter(torch.full((hidden_size,), float(embed_rms)))

    @classmethod
    def from_config(cls, config: dict) -> "FusionProjector":
        config = dict(config)
        return cls(config.pop("pooled_dim"), config.pop("hidden_size"), config.pop("num_tokens"), **config)

    def forward(self, pooled: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        """pooled [B, D], stats [B, 4] -> soft tokens [B, num_tokens, hidden_size]."""
        dtype = self.mlp[0].weight.dtype
        x = torch.cat([self.norm(pooled.to(dtype)), stats.to(dtype)], dim=1)
        tokens = self.mlp(x).view(x.shape[0], self.num_tokens, self.hidden_size)
        tokens = tokens * torch.rsqrt(tokens.pow(2).mean(-1, keepdim=True) + 1e-6)
        return tokens * self.gain


@dataclass(frozen=True)
class HybridPrompt:
    """The user-turn text of the hybrid prompt and where its special positions are.

    Layout of the user turn: image, ``fusion_tokens`` slot tokens, the optional verdict sentence,
    the question. ``verdict_offset`` is the verdict word's distance from ``<|vision_end|>`` (the
    image expands before that token, so the distance is the same in every row).
    """

    question: str
    fusion_tokens: int
    slot_token_id: int
    fake_word: str
    real_word: str
    head_verdict: bool
    verdict_offset: int | None
    verdict_ids: tuple[int, int] | None  # (fake id, real id) of the word at the verdict position

    @property
    def text(self) -> str:
        return self.text_with(self.real_word)

    def text_with(self, verdict_word: str) -> str:
        verdict = VERDICT_TEMPLATE.format(word=verdict_word) if self.head_verdict else ""
        return SLOT_TOKEN * self.fusion_tokens + verdict + self.question

    @classmethod
    def build(cls, processor, question: str, fusion_tokens: int, *, fake_word: str, real_word: str,
              head_verdict: bool) -> "HybridPrompt":
        tokenizer = getattr(processor, "tokenizer", processor)
        slot_ids = tokenizer(SLOT_TOKEN, add_special_tokens=False)["input_ids"]
        if len(slot_ids) != 1:
            raise ValueError(f"the tokenizer splits the slot token {SLOT_TOKEN!r} into {slot_ids}; the model folder's "
                             "tokenizer lacks Qwen2.5-VL's special tokens")
        slot_id = slot_ids[0]
        if SLOT_TOKEN in question:
            raise ValueError(f"the prompt must not contain {SLOT_TOKEN!r}: it marks the soft-token slots")
        if fusion_tokens < 0:
            raise ValueError(f"fusion_tokens must be >= 0, got {fusion_tokens}")
        base = cls(question, fusion_tokens, slot_id, fake_word, real_word, head_verdict, None, None)
        if not head_verdict:
            return base
        vision_end = tokenizer.convert_tokens_to_ids("<|vision_end|>")
        encoded = {}
        for word in (fake_word, real_word):
            text = prompt_text_for(processor, base.text_with(word))
            encoded[word] = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        fake_ids, real_ids = encoded[fake_word], encoded[real_word]
        differ = [i for i, (a, b) in enumerate(zip(fake_ids, real_ids)) if a != b]
        if len(fake_ids) != len(real_ids) or len(differ) != 1:
            raise ValueError(
                f"with head_verdict_prompt the verdict words {fake_word!r} / {real_word!r} must each be one token "
                f"inside {VERDICT_TEMPLATE!r}; they tokenise to different lengths or differ in several tokens. "
                "Choose single-token answer words (target_text) or set head_verdict_prompt to false")
        position = differ[0]
        offset = position - real_ids.index(vision_end)
        return cls(question, fusion_tokens, slot_id, fake_word, real_word, head_verdict, offset,
                   (fake_ids[position], real_ids[position]))


@dataclass
class HybridOutput(ModelOutput):
    """LM ``logits`` [B, kept positions, V] and the heads' ``cls_logit`` [B], ``heatmap_logit``
    [B, H, W] and ``pooled`` [B, D], from one forward (attribute or key access)."""

    logits: torch.Tensor | None = None
    cls_logit: torch.Tensor | None = None
    heatmap_logit: torch.Tensor | None = None
    pooled: torch.Tensor | None = None


class HybridModel(nn.Module):
    """Qwen2.5-VL + forensic heads + fusion projector; one forward gives LM logits and head outputs.

    ``base`` may carry a LoRA adapter (injected in place) anywhere. ``fusion`` is None exactly when
    ``prompt.fusion_tokens`` is 0. Inputs are the processor's keys for a batch built with
    ``prompt.text`` as the question (see ``data.collate.HybridCollator``); images must share one patch
    grid (letterboxed).
    """

    def __init__(self, base: nn.Module, heads: ForensicHeads, fusion: FusionProjector | None,
                 layers: list[int], prompt: HybridPrompt):
        super().__init__()
        if (fusion is None) != (prompt.fusion_tokens == 0):
            raise ValueError(f"the prompt reserves {prompt.fusion_tokens} soft-token slots but the fusion projector "
                             f"is {'missing' if fusion is None else 'present'}")
        text_hidden = int(base.config.text_config.hidden_size)
        if fusion is not None and (fusion.num_tokens != prompt.fusion_tokens or fusion.hidden_size != text_hidden):
            raise ValueError(f"fusion projector makes {fusion.num_tokens} tokens of width {fusion.hidden_size}; the "
                             f"prompt has {prompt.fusion_tokens} slots and the LM width is {text_hidden}")
        self.base = base
        self.heads = heads
        self.fusion = fusion
        self.layers = list(layers)
        self.prompt = prompt
        self.tap = ViTFeatureTap(get_visual(base), self.layers)
        self._vision_end_id = int(base.config.vision_end_token_id)
        self._pending: dict | None = None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor,
                image_grid_thw: torch.Tensor, logits_to_keep: int | torch.Tensor = 0, use_cache: bool = False,
                **model_kwargs) -> HybridOutput:
        """Same call as the Qwen2.5-VL forward (``logits_to_keep`` included) without labels or a cache."""
        if use_cache:
            raise ValueError("the hybrid model has no generation cache: its soft tokens need the whole prompt")
        self._pending = {"input_ids": input_ids, "heads": None}
        handle = get_language_model(self.base).register_forward_pre_hook(self._inject, with_kwargs=True)
        try:
            out = self.base(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                            image_grid_thw=image_grid_thw, logits_to_keep=logits_to_keep, use_cache=False,
                            **model_kwargs)
            heads_out = self._pending["heads"]
            if heads_out is None:
                raise RuntimeError("the language model was not called during the Qwen2.5-VL forward; "
                                   "this transformers version is not supported by the hybrid model")
        finally:
            handle.remove()
            self._pending = None
            self.tap.clear()
        return HybridOutput(logits=out.logits, **heads_out)

    def _inject(self, module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        if embeds is None or args:
            raise RuntimeError("the language model was called without inputs_embeds as a keyword; this "
                               "transformers version's Qwen2_5_VLModel.forward is not supported by the hybrid model")
        input_ids = self._pending["input_ids"]
        if embeds.shape[:2] != input_ids.shape:
            raise RuntimeError(f"language model inputs {tuple(embeds.shape[:2])} do not match input_ids "
                               f"{tuple(input_ids.shape)} (generation with a cache is not supported)")
        heads_out = self.heads(self.tap.stacked())
        self._pending["heads"] = heads_out
        if self.fusion is not None:
            slots = input_ids == self.prompt.slot_token_id
            counts = slots.sum(1)
            if not bool((counts == self.prompt.fusion_tokens).all()):
                raise ValueError(f"every row needs {self.prompt.fusion_tokens} soft-token slots, found "
                                 f"{counts.tolist()}: build the batch with data.collate.HybridCollator and this model's prompt")
            soft = self.fusion(heads_out["pooled"], head_statistics(heads_out["cls_logit"], heads_out["heatmap_logit"]))
            embeds = embeds.masked_scatter(slots.unsqueeze(-1).expand_as(embeds), soft.to(embeds.dtype))
        if self.prompt.head_verdict:
            embeds = self._write_verdict(embeds, input_ids, heads_out["cls_logit"])
        kwargs["inputs_embeds"] = embeds
        return args, kwargs

    def _write_verdict(self, embeds: torch.Tensor, input_ids: torch.Tensor, cls_logit: torch.Tensor) -> torch.Tensor:
        ends = input_ids == self._vision_end_id
        if not bool((ends.sum(1) == 1).all()):
            raise ValueError("every row needs exactly one image (one <|vision_end|> token) for the head verdict")
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        positions = ends.int().argmax(1) + self.prompt.verdict_offset
        fake_id, real_id = self.prompt.verdict_ids
        if not bool((input_ids[rows, positions] == real_id).all()):
            raise ValueError("the verdict word is not where the prompt puts it: build the batch with "
                             "data.collate.HybridCollator and this model's prompt")
        with torch.no_grad():
            words = torch.where(cls_logit.detach() >= 0, fake_id, real_id).to(input_ids.device)
            word_embeds = self.base.get_input_embeddings()(words).to(embeds.dtype)
        return embeds.index_put((rows, positions), word_embeds)


@dataclass(frozen=True)
class HybridSpec:
    """Everything besides tensors that a hybrid checkpoint needs to rebuild its model and prompt."""

    visual_layers: list[int]
    fusion_tokens: int
    head_verdict_prompt: bool
    prompt: str
    fake_word: str
    real_word: str
    image_size: int
    lora_targets: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_train_config(cls, cfg, lora_targets: Mapping[str, Sequence[str]]) -> "HybridSpec":
        return cls(list(cfg.visual_layers), cfg.fusion_tokens, cfg.head_verdict_prompt, cfg.prompt,
                   cfg.target_text.fake, cfg.target_text.real, cfg.image_size,
                   {k: list(v) for k, v in lora_targets.items()})

    def hybrid_prompt(self, processor) -> HybridPrompt:
        return HybridPrompt.build(processor, self.prompt, self.fusion_tokens, fake_word=self.fake_word,
                                  real_word=self.real_word, head_verdict=self.head_verdict_prompt)


def build_hybrid_model(base: nn.Module, processor, cfg, say=print) -> tuple[HybridModel, HybridSpec]:
    """A fresh hybrid model for training from a ``Task3TrainConfig``: LoRA injected into ``base``,
    new heads and fusion projector on ``base``'s device (sizes read from ``base.config``). Notes on
    the LoRA targets (patterns that matched nothing) go to ``say``."""
    targets, notes = inject_hybrid_lora(base, cfg.lora)
    for note in notes:
        say(f"note: {note}")
    spec = HybridSpec.from_train_config(cfg, targets)
    heads = ForensicHeads.from_vision_config(base.config.vision_config, cfg.visual_layers, cfg.fuse_dim)
    fusion = None
    if cfg.fusion_tokens:
        fusion = FusionProjector(cfg.fuse_dim, int(base.config.text_config.hidden_size), cfg.fusion_tokens,
                                 dropout=cfg.fusion_hidden_dropout, embed_rms=embedding_rms(base))
    return assemble_hybrid_model(base, heads, fusion, spec, processor), spec


def assemble_hybrid_model(base, heads, fusion, spec: HybridSpec, processor) -> HybridModel:
    device = next(base.parameters()).device
    fusion = fusion.to(device) if fusion is not None else None
    return HybridModel(base, heads.to(device), fusion, spec.visual_layers, spec.hybrid_prompt(processor))
