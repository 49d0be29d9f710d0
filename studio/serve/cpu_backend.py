"""A chat backend that generates with transformers on the CPU, for machines without a vLLM server.

The model comes from a loader function (by default `studio.modeling.load_model`, which reads stock
and FLAP-pruned checkpoints; an INT4 export passes its own), the prompt from the checkpoint's
`AutoProcessor` and chat template, images included. `generate` runs in a worker thread and
`TextIteratorStreamer` hands its text over as it is produced.

Loading is stoppable: a reply stopped while its model waits for another model's construction (the
studio builds one model at a time, see `studio.modeling.model_construction`) ends at once as
"stopped" instead of waiting for that load.

Sampling is done by `PrivateRngSampler` with a generator of its own rather than by
`generate(do_sample=True)`, which draws from torch's process-wide generator: two panes generating at
once would otherwise consume each other's random numbers and a seed would not reproduce a reply.
"""

from __future__ import annotations

import functools
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from transformers import (
    AutoProcessor,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TextIteratorStreamer,
    TopPLogitsWarper,
)

from studio.checkpoint import is_checkpoint_folder
from studio.modeling import ConstructionStopped, load_model, stoppable_construction
from studio.serve.chat import (
    ChatError,
    ChatEvent,
    Message,
    SamplingSettings,
    StatsClock,
    TextDelta,
    data_url_to_image,
)

ModelLoader = Callable[[Path], torch.nn.Module]


class PrivateRngSampler(LogitsProcessor):
    """Samples the next token (temperature, then top-p) with its own `torch.Generator`.

    It leaves only the sampled token finite, so greedy decoding (`do_sample=False`) emits it.
    """

    def __init__(self, temperature: float, top_p: float, seed: int | None):
        self.warpers = [TemperatureLogitsWarper(temperature)]
        if top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p))
        self.generator = torch.Generator().manual_seed(seed if seed is not None else secrets.randbits(63))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for warper in self.warpers:
            scores = warper(input_ids, scores)
        probs = torch.softmax(scores.float(), dim=-1)
        token = torch.multinomial(probs.cpu(), 1, generator=self.generator).to(scores.device)
        chosen = torch.full_like(scores, float("-inf"))
        return chosen.scatter_(1, token, 0.0)


class StopWhenSet(StoppingCriteria):
    """Ends generation once any of `events` is set."""

    def __init__(self, *events: threading.Event):
        self.events = events

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        stopped = any(event.is_set() for event in self.events)
        return torch.full((input_ids.shape[0],), stopped, dtype=torch.bool, device=input_ids.device)


def acquire_unless_stopped(lock: threading.Lock, should_stop: Callable[[], bool], poll_s: float = 0.05) -> bool:
    """Acquire `lock` and return True, or return False once `should_stop()` is true."""
    while not lock.acquire(timeout=poll_s):
        if should_stop():
            return False
    return True


def to_processor_messages(messages: Sequence[Message]) -> list[Message]:
    """OpenAI-format messages as the processor's chat template reads them: data URLs become images."""
    converted = []
    for index, message in enumerate(messages):
        content = message.get("content")
        if content is None or isinstance(content, str):
            converted.append({"role": message["role"], "content": content or ""})
            continue
        parts = []
        for part in content:
            kind = part.get("type")
            if kind == "text":
                parts.append({"type": "text", "text": part["text"]})
            elif kind == "image_url":
                parts.append({"type": "image", "image": data_url_to_image(part["image_url"]["url"])})
            else:
                raise ValueError(f"messages[{index}].content: part type {kind!r} is not supported")
        converted.append({"role": message["role"], "content": parts})
    return converted


def has_images(messages: Sequence[Message]) -> bool:
    return any(
        isinstance(m.get("content"), list) and any(p.get("type") == "image_url" for p in m["content"]) for m in messages
    )


class TransformersBackend:
    """Streams chat replies from a checkpoint loaded with transformers on the CPU.

    `loader(model_dir)` returns the model in eval mode; the default reads stock and FLAP-pruned
    checkpoints in `dtype`. Pass another loader for INT4 exports (e.g. GPTQModel's CPU kernels).
    The model and processor load on first use (or on `load()`). One reply runs at a time per
    backend; two backends generate concurrently.
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        name: str | None = None,
        loader: ModelLoader | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        self.model_dir = Path(model_dir)
        if not is_checkpoint_folder(self.model_dir):
            raise ValueError(f"model_dir: {self.model_dir} holds no config.json")
        self.name = name or self.model_dir.name
        self._loader = loader or functools.partial(load_model, dtype=dtype)
        self._model = None
        self._processor = None
        # Seconds the last load took (processor, model, probe forward); None until loaded.
        self.load_seconds: float | None = None
        self._load_lock = threading.Lock()
        self._generate_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TransformersBackend({str(self.model_dir)!r})"

    @property
    def loading(self) -> bool:
        """Whether a reply is waiting for the model to load."""
        return self._model is None and self._load_lock.locked()

    def load(self, stop: threading.Event | None = None) -> None:
        """Load the model and its processor now instead of at the first reply.

        With `stop`, waiting (for another reply's load of this backend, or for another model's
        construction) ends with `ConstructionStopped` once `stop` is set; the model stays unloaded.
        """
        if self._model is not None:
            return
        should_stop = stop.is_set if stop is not None else (lambda: False)
        if not acquire_unless_stopped(self._load_lock, should_stop):
            raise ConstructionStopped("stopped while another reply loads this model")
        try:
            if self._model is None:
                started = time.perf_counter()
                processor = AutoProcessor.from_pretrained(self.model_dir)
                with stoppable_construction(should_stop):
                    model = self._loader(self.model_dir)
                self._processor, self._model = processor, model
                self.load_seconds = time.perf_counter() - started
        finally:
            self._load_lock.release()

    @property
    def tokenizer(self):
        return getattr(self._processor, "tokenizer", self._processor)

    def stream_chat(
        self, messages: Sequence[Message], settings: SamplingSettings, stop: threading.Event | None = None
    ) -> Iterator[ChatEvent]:
        stop = stop or threading.Event()
        try:
            self.load(stop)
        except ConstructionStopped:
            yield StatsClock().finish(prompt_tokens=None, output_tokens=0, finish_reason="stopped")
            return
        except Exception as err:  # noqa: BLE001 - every failure reaches the pane as text
            yield ChatError(f"cannot load the model from {self.model_dir}: {type(err).__name__}: {err}")
            return
        clock = StatsClock()  # after loading: the first reply's statistics leave the load time out
        if stop.is_set():  # stopped during the load: no reply
            yield clock.finish(prompt_tokens=None, output_tokens=0, finish_reason="stopped")
            return
        try:
            inputs = self._prompt_inputs(messages)
        except Exception as err:  # noqa: BLE001
            yield ChatError(f"cannot build the prompt: {err}")
            return
        if not acquire_unless_stopped(self._generate_lock, stop.is_set):  # another session's reply runs
            yield clock.finish(prompt_tokens=int(inputs["input_ids"].shape[1]), output_tokens=0, finish_reason="stopped")
            return
        try:
            yield from self._generate(inputs, settings, stop, clock)
        finally:
            self._generate_lock.release()

    def _prompt_inputs(self, messages: Sequence[Message]) -> dict:
        if has_images(messages) and not hasattr(self._processor, "image_processor"):
            raise ValueError(f"{self.name} has no image processor and cannot read images")
        return self._processor.apply_chat_template(
            to_processor_messages(messages),
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
        )

    def _generate(self, inputs, settings: SamplingSettings, stop: threading.Event, clock: StatsClock) -> Iterator[ChatEvent]:
        prompt_tokens = int(inputs["input_ids"].shape[1])
        # The timeout keeps a wedged worker from hanging the pane forever.
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600.0)
        logits_processor = LogitsProcessorList()
        if settings.temperature > 0:
            logits_processor.append(PrivateRngSampler(settings.temperature, settings.top_p, settings.seed))
        outcome: dict = {}
        abandoned = threading.Event()

        def work():
            try:
                outcome["sequences"] = self._model.generate(
                    **inputs,
                    max_new_tokens=settings.max_tokens,
                    do_sample=False,
                    # The checkpoint's sampling defaults would only raise "unused flag" warnings.
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    logits_processor=logits_processor,
                    stopping_criteria=StoppingCriteriaList([StopWhenSet(stop, abandoned)]),
                    streamer=streamer,
                )
            except BaseException as err:  # noqa: BLE001 - reported to the pane below
                outcome["error"] = err
                streamer.end()

        worker = threading.Thread(target=work, name=f"generate-{self.name}", daemon=True)
        worker.start()
        try:
            for text in streamer:
                if text:
                    clock.mark_text()
                    yield TextDelta(text)
        except GeneratorExit:
            # The consumer closed the stream early: end generation before giving the model up.
            abandoned.set()
            worker.join()
            raise
        except Exception as err:  # noqa: BLE001 - the streamer's queue timed out
            abandoned.set()
            worker.join()
            yield ChatError(f"generation stalled: {type(err).__name__}: {err}")
            return
        worker.join()
        if "error" in outcome:
            err = outcome["error"]
            yield ChatError(f"generation failed: {type(err).__name__}: {err}")
            return
        output_tokens = int(outcome["sequences"].shape[1]) - prompt_tokens
        if stop.is_set():
            finish_reason = "stopped"
        elif output_tokens >= settings.max_tokens:
            finish_reason = "length"
        else:
            finish_reason = "stop"
        yield clock.finish(prompt_tokens=prompt_tokens, output_tokens=output_tokens, finish_reason=finish_reason)
