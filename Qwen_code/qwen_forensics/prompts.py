"""The Real/Fake question and the answer tokens read from the model (SPEC 6.3).

With Qwen's chat template the answer starts right after "<|im_start|>assistant\\n", at the start of a
pre-token, so "Fake" (no leading space) is the token the model emits; " Fake" is a different token.
Train and eval both take the answer token ids from ``answer_token_id``, so they cannot drift apart.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

DEFAULT_PROMPT = "Is this image real or fake? Answer with one word: Real or Fake."
DEFAULT_FAKE_TOKEN = "Fake"
DEFAULT_REAL_TOKEN = "Real"


# The earlier scripts marked the answer in their prompt templates with a cue such as "Answer:".
_ANSWER_CUE = re.compile(r"(?:answer|答案|回答)\s*[:：]?\s*$", re.IGNORECASE)
LABEL_FIELD = "label_text"


def prompt_from_template(template: str) -> str:
    """The user prompt meant by an earlier ``prompt_template`` such as ``"Q ... Answer: {label_text}"``.

    The earlier map.py formatted the template per record and trained on the whole text, question and
    answer word together. What it meant is a question answered by the label word; with the chat
    template the answer belongs in the assistant turn. So the text before ``{label_text}``, with a
    trailing answer cue ("Answer:") removed, is the user prompt; the config's answer words are the
    answers. ``{label_text}`` must end the template and be its only field.
    """
    fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    if fields != [LABEL_FIELD]:
        raise ValueError(f"prompt_template {template!r} must contain exactly one field, {{{LABEL_FIELD}}}, at its end "
                         f"(found fields {fields}); or give prompt_text instead")
    head, _, tail = template.partition("{" + LABEL_FIELD + "}")
    if tail.strip():
        raise ValueError(f"prompt_template {template!r}: text after {{{LABEL_FIELD}}} ({tail!r}) would follow the "
                         "answer; end the template with the answer field")
    question = _ANSWER_CUE.sub("", head.rstrip()).rstrip()
    if not question:
        raise ValueError(f"prompt_template {template!r} holds no question before {{{LABEL_FIELD}}}")
    return question


def answer_word(word: str) -> tuple[str, str | None]:
    """The answer word as the chat template emits it, and a note when that differs from ``word``.

    The answer starts right after "<|im_start|>assistant\\n", so a leading space makes " Fake" a
    different token, one the model does not emit there; reading its logit would score the wrong token.
    """
    stripped = word.strip()
    if stripped == word:
        return word, None
    return stripped, (f"answer word {word!r} has surrounding whitespace; the model's answer after the assistant "
                      f"header is {stripped!r} (no space), which is the token read")


def build_messages(prompt_text: str) -> list[dict]:
    """One user turn: the image first, then the question (the order Qwen2.5-VL was tuned with)."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt_text}]}]


def prompt_text_for(processor, prompt_text: str) -> str:
    """The full chat-templated prompt, ending with the assistant header the answer follows."""
    return processor.apply_chat_template(build_messages(prompt_text), tokenize=False, add_generation_prompt=True)


def _tokenizer_of(tokenizer_or_processor):
    return getattr(tokenizer_or_processor, "tokenizer", tokenizer_or_processor)


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` alone (no special tokens added)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def answer_token_id(tokenizer, word: str) -> int:
    """The single token id the chat template puts right after the assistant header for ``word``.

    ``tokenizer`` may be a tokenizer or a processor (whose chat template is then used). The id is
    found by tokenising the templated prompt with and without ``word`` appended; the difference must
    be exactly one token.
    """
    prompt = prompt_text_for(tokenizer, DEFAULT_PROMPT)
    tokenizer = _tokenizer_of(tokenizer)
    prompt_ids = encode_text(tokenizer, prompt)
    full_ids = encode_text(tokenizer, prompt + word)
    added = full_ids[len(prompt_ids) :]
    if full_ids[: len(prompt_ids)] != prompt_ids or len(added) != 1:
        pieces = tokenizer.convert_ids_to_tokens(added) if full_ids[: len(prompt_ids)] == prompt_ids else "merged into the prompt"
        raise ValueError(
            f"answer word {word!r} is not a single token after the assistant header (it becomes {pieces}). "
            f"Set fake_token/real_token in the config to words the tokenizer keeps whole, e.g. "
            f"{DEFAULT_FAKE_TOKEN!r} / {DEFAULT_REAL_TOKEN!r} for Qwen2.5-VL (no leading space)."
        )
    return added[0]


def answer_token_ids(tokenizer, fake: str = DEFAULT_FAKE_TOKEN, real: str = DEFAULT_REAL_TOKEN) -> tuple[int, int]:
    """(fake_id, real_id); the two words must be different tokens."""
    fake_id, real_id = answer_token_id(tokenizer, fake), answer_token_id(tokenizer, real)
    if fake_id == real_id:
        raise ValueError(f"fake word {fake!r} and real word {real!r} are the same token ({fake_id}); use two different words")
    return fake_id, real_id


# The config keys under which a prompt setup is recorded (the user's: ``fake_token`` / ``real_token``), per field.
SETUP_RECORD_KEYS = {"image_size": "image_size", "prompt_text": "prompt_text", "fake_word": "fake_token",
                     "real_word": "real_token"}


@dataclass(frozen=True)
class PromptSetup:
    """Everything that decides which tokens the model sees and which answer token is read. The answer
    words are ``fake_word`` / ``real_word`` everywhere in the code (Task 3's spec too); configs and
    recorded files keep the user's key names (``fake_token``, ``target_text.fake``)."""
    image_size: int | None  # letterbox side; None = native resolution within the processor's bounds
    prompt_text: str
    fake_word: str
    real_word: str

    @property
    def answers(self) -> dict[int, str]:
        """The answer word per label (0 real, 1 fake), as the collators pick them."""
        return {0: self.real_word, 1: self.fake_word}

    def record(self) -> dict:
        """The setup under its recorded (config) key names."""
        return {key: getattr(self, name) for name, key in SETUP_RECORD_KEYS.items()}

    @classmethod
    def from_record(cls, values) -> "PromptSetup":
        return cls(**{name: values[key] for name, key in SETUP_RECORD_KEYS.items()})
