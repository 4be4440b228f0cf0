"""The tiny model's tokenizer: a byte-level BPE trained on a few sentences, with Qwen2's normaliser,
pre-tokeniser and decoder, Qwen2.5-VL's added tokens in their released order and its chat template,
so that prompt layout and answer tokens behave as with the real tokenizer."""

from __future__ import annotations

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

# Qwen2.5-VL-Instruct's chat template, verbatim: the prompt layout (and therefore which token follows
# "<|im_start|>assistant\n") must be the real one, or answer-token logic tested here would not carry over.
QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2's pre-tokenisation regex (from the released tokenizer.json).
QWEN_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Qwen2.5-VL's added tokens in their released order; the bool is the tokenizer's "special" flag.
QWEN_ADDED_TOKENS = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)

# Training text for the tiny BPE. The answer words appear often enough, with and without a leading
# space and in both cases, that each becomes one learned token (checked after training).
_CORPUS_LINES = (
    "You are a helpful assistant.",
    "Is this image real or fake? Answer with one word: Real or Fake.",
    "Is this picture real or fake? Answer Real or Fake.",
    "Real",
    "Fake",
    "real",
    "fake",
    "The answer is Real. The answer is Fake. It looks real. It looks fake.",
    "A real photo of a face. A fake photo of a face. Real faces, fake faces.",
    "This frame was taken from a video. Some frames are manipulated and some are not.",
    "The manipulated region is marked in the mask. The mask shows which pixels were changed.",
    "Look at the eyes, the mouth, the skin and the edges of the face.",
    "The lighting is consistent and the texture is natural, so the image is real.",
    "The blending boundary is visible around the jaw, so the image is fake.",
    "Describe the image. What do you see in this picture?",
    "There is a person in the image. The background is blurred.",
    "Answer the question with a single word.",
    "Yes. No. Maybe. I am not sure.",
    "The quick brown fox jumps over the lazy dog.",
    "Picture 1: Video 1: image video frame mask label score",
    "0 1 2 3 4 5 6 7 8 9 10 100 2025",
    "Forgery detection asks whether a photograph has been edited, generated or swapped by a machine.",
    "Localisation goes further and draws a heatmap over the pixels that were manipulated.",
    "Deepfake methods replace the identity of a person while keeping the expression and the pose.",
    "Compression artefacts, resampling traces and colour mismatches often betray an edited region.",
    "A careful analyst compares shadows, reflections, hair strands, teeth, ears and glasses.",
    "Training data contains thousands of frames extracted from short clips recorded indoors and outdoors.",
    "Every sample carries a label: zero means authentic, one means tampered.",
    "The vision transformer splits the picture into small patches and processes them in windows.",
    "Attention layers exchange information between distant parts of the scene.",
    "The language model reads the visual tokens together with the question and writes an answer.",
    "Low rank adapters add a few trainable weights to a frozen network.",
    "Validation metrics include accuracy, precision, recall, area under the curve and intersection over union.",
    "Morning light fell across the kitchen table where a cup of coffee slowly cooled.",
    "Children played football in the park until the evening rain began to fall.",
    "The museum displayed paintings, sculptures and old maps of distant islands.",
    "Engineers measured the temperature, pressure and humidity every hour during the experiment.",
    "She opened the window, listened to the birds and wrote a long letter to her brother.",
    "Mountains, rivers, forests and deserts cover different parts of the continent.",
    "Please summarise the document, translate the title and count the paragraphs.",
    "Numbers, dates and names must be checked twice before the report is published.",
)

_CORPUS_REPEATS = 20

_ANSWER_WORDS = ("Real", "Fake", " Real", " Fake", "real", "fake")

_BPE_VOCAB_SIZE = 1024


def build_tiny_tokenizer() -> Tokenizer:
    """Byte-level BPE with Qwen2's normaliser / pre-tokeniser / decoder and Qwen's added tokens."""
    tokenizer = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=_BPE_VOCAB_SIZE,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(list(_CORPUS_LINES) * _CORPUS_REPEATS, trainer=trainer)
    for word in _ANSWER_WORDS:
        ids = tokenizer.encode(word).ids
        if len(ids) != 1:
            raise RuntimeError(f"tiny tokenizer: {word!r} became {len(ids)} tokens; extend _CORPUS_LINES")
    tokenizer.add_tokens([AddedToken(text, special=special, normalized=False) for text, special in QWEN_ADDED_TOKENS])
    return tokenizer


def tokenizer_config(tokenizer: Tokenizer) -> dict:
    added = {}
    for text, special in QWEN_ADDED_TOKENS:
        added[str(tokenizer.token_to_id(text))] = {
            "content": text,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": special,
        }
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": [text for text, special in QWEN_ADDED_TOKENS[1:14]],
        "bos_token": None,
        "chat_template": QWEN_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
