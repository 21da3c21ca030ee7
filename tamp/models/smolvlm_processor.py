"""SmolVLM's processor for images and text on an install without num2words or torchvision.

The stock ``SmolVLMProcessor`` refuses to be built without the ``num2words`` package (it spells a video's frame count
in words) and lists a video processor among its parts, which needs torchvision; neither is in tamp's lock. Images and
text need neither: ``SmolVLMProcessorNoVideo`` declares only ``(image_processor, tokenizer)`` and refuses videos in
one line. It saves itself under the stock class name, so an artifact never names a class only tamp has, and
``load_smolvlm_processor`` (the family's processor loader, `tamp.processors.load_processor`) builds it from any
SmolVLM checkpoint's saved parts: image processor, tokenizer, ``image_seq_len`` and chat template.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import ProcessorMixin, SmolVLMProcessor

STOCK_NAME = "SmolVLMProcessor"


class SmolVLMProcessorNoVideo(SmolVLMProcessor):
    """SmolVLM's processor without its video part: the stock image splitting and prompt expansion, no num2words."""

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, image_seq_len: int = 169,
                 chat_template: str | None = None, **kwargs: Any) -> None:
        self.fake_image_token = getattr(tokenizer, "fake_image_token", "<fake_token_around_image>")
        self.image_token = getattr(tokenizer, "image_token", "<image>")
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.end_of_utterance_token = getattr(tokenizer, "end_of_utterance_token", "<end_of_utterance>")
        self.global_image_token = getattr(tokenizer, "global_image_token", "<global-img>")
        self.image_seq_len = image_seq_len
        self.video_token = getattr(tokenizer, "video_token", "<video>")
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    def apply_chat_template(self, conversation: Any, chat_template: str | None = None, **kwargs: Any) -> Any:
        """The generic template rendering: the stock one first reads its video processor's frame settings."""
        return ProcessorMixin.apply_chat_template(self, conversation, chat_template, **kwargs)

    def replace_video_token(self, video_inputs: dict, video_idx: int, **kwargs: Any) -> str:
        raise ValueError("this SmolVLM processor takes images and text only: SmolVLM's video prompts need the "
                         "num2words and torchvision packages, which tamp does not install")

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> Any:
        """Save under the stock processor's class name, so an artifact names no class that only tamp has (no video
        processor config is written: this processor has none)."""
        out = super().save_pretrained(save_directory, *args, **kwargs)
        for name in ("processor_config.json", "tokenizer_config.json"):
            path = Path(save_directory) / name
            if path.is_file():
                data = json.loads(path.read_text(encoding="utf-8"))
                data["processor_class"] = STOCK_NAME
                path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return out


def load_smolvlm_processor(path: str | Path, revision: str | None = None) -> SmolVLMProcessorNoVideo:
    """A SmolVLM checkpoint's processor, built from its saved image processor, tokenizer and processor settings."""
    from transformers import AutoImageProcessor, AutoTokenizer
    from transformers.utils import cached_file

    def saved(name: str) -> str | None:
        try:
            return cached_file(str(path), name, revision=revision, _raise_exceptions_for_missing_entries=False)
        except OSError:
            return None

    config = saved("processor_config.json")
    settings = json.loads(Path(config).read_text(encoding="utf-8")) if config else {}
    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
    template_file = saved("chat_template.jinja")
    template = Path(template_file).read_text(encoding="utf-8") if template_file else \
        settings.get("chat_template") or getattr(tokenizer, "chat_template", None)
    image_processor = AutoImageProcessor.from_pretrained(path, revision=revision)
    return SmolVLMProcessorNoVideo(image_processor, tokenizer, image_seq_len=int(settings.get("image_seq_len", 169)),
                                   chat_template=template)
