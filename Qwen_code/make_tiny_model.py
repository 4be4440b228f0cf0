"""Write a tiny, randomly initialised Qwen2.5-VL-Instruct folder (real Hugging Face format) for tests and the demo.

    python Qwen_code/make_tiny_model.py --out /tmp/tiny_qwen --seed 0
"""

from __future__ import annotations

import argparse

from qwen_forensics.demo.tiny import build_tiny_model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to write (created if needed; existing files are overwritten)")
    parser.add_argument("--seed", type=int, default=0, help="weight seed; the same seed writes the same bytes")
    parser.add_argument("--text-layers", type=int, default=2,
                        help="language-model layers (28, as in the 7B, for configs that name LM layers by index)")
    args = parser.parse_args(argv)
    print(f"tiny Qwen2.5-VL written to {build_tiny_model(args.out, seed=args.seed, text_layers=args.text_layers)}")


if __name__ == "__main__":
    main()
