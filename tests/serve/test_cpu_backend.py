"""The transformers CPU fallback: real generation on the demo model, images included."""

from __future__ import annotations

import shutil
import threading

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from safetensors.torch import load_file, save_file

from studio.modeling import FlapGemma4MLP, decoder_layers, load_model, mark_pruned, model_construction, text_config_of
from studio.serve.chat import ChatError, GenerationStats, SamplingSettings, TextDelta, user_message
from studio.serve.cpu_backend import PrivateRngSampler, TransformersBackend, to_processor_messages

IMAGE_SOFT_TOKENS = 70  # the demo processor's image_seq_length


def reply(backend, messages, settings, stop=None):
    events = list(backend.stream_chat(messages, settings, stop))
    assert all(isinstance(e, TextDelta) for e in events[:-1])
    return "".join(e.text for e in events[:-1]), events[-1]


@pytest.fixture(scope="module")
def demo_backend(demo_model_dir):
    return TransformersBackend(demo_model_dir, name="demo")


def picture(color=(220, 30, 30)) -> Image.Image:
    return Image.new("RGB", (48, 32), color)


def test_greedy_reply_with_an_image_matches_transformers_generate(demo_backend, demo_model_dir):
    messages = [user_message("What is in the picture?", [picture()])]
    text, final = reply(demo_backend, messages, SamplingSettings(temperature=0, max_tokens=12))
    assert isinstance(final, GenerationStats)

    processor = AutoProcessor.from_pretrained(demo_model_dir)
    inputs = processor.apply_chat_template(
        to_processor_messages(messages), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    image_token_id = processor.tokenizer.convert_tokens_to_ids("<|image|>")
    assert 0 < int((inputs["input_ids"] == image_token_id).sum()) <= IMAGE_SOFT_TOKENS  # the image is in the prompt
    assert "pixel_values" in inputs
    model = load_model(demo_model_dir)
    expected = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    new_tokens = expected[0, inputs["input_ids"].shape[1] :]
    assert text == processor.tokenizer.decode(new_tokens, skip_special_tokens=True)
    assert final.prompt_tokens == inputs["input_ids"].shape[1]
    assert final.output_tokens == len(new_tokens)
    assert final.finish_reason == ("length" if len(new_tokens) == 12 else "stop")
    assert final.ttft_s is not None and final.ttft_s <= final.total_s


def test_the_image_changes_the_reply(demo_backend):
    settings = SamplingSettings(temperature=0, max_tokens=16)
    red, _ = reply(demo_backend, [user_message("Describe it.", [picture((255, 0, 0))])], settings)
    noise = Image.fromarray((torch.rand(32, 48, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy())
    noisy, _ = reply(demo_backend, [user_message("Describe it.", [noise])], settings)
    assert red != noisy


def test_a_seed_reproduces_a_sampled_reply(demo_backend):
    messages = [user_message("Tell me about the river.")]
    first, _ = reply(demo_backend, messages, SamplingSettings(temperature=1.0, top_p=0.95, max_tokens=16, seed=7))
    again, _ = reply(demo_backend, messages, SamplingSettings(temperature=1.0, top_p=0.95, max_tokens=16, seed=7))
    other, _ = reply(demo_backend, messages, SamplingSettings(temperature=1.0, top_p=0.95, max_tokens=16, seed=8))
    assert first == again
    assert first != other


def test_a_multi_turn_history_is_part_of_the_prompt(demo_backend):
    settings = SamplingSettings(temperature=0, max_tokens=4)
    _, single = reply(demo_backend, [user_message("Hello")], settings)
    history = [user_message("Hello"), {"role": "assistant", "content": "Hi there"}, user_message("And then?")]
    _, multi = reply(demo_backend, history, settings)
    assert multi.prompt_tokens > single.prompt_tokens


def test_stop_ends_generation_early(demo_backend):
    stop = threading.Event()
    chunks = 0
    for event in demo_backend.stream_chat([user_message("Go on")], SamplingSettings(max_tokens=300, seed=1), stop):
        if isinstance(event, TextDelta):
            chunks += 1
            stop.set()
        final = event
    assert isinstance(final, GenerationStats)
    assert final.finish_reason == "stopped"
    assert final.output_tokens < 300


def test_a_bad_image_is_a_readable_error(demo_backend):
    message = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}
    text, final = reply(demo_backend, [message], SamplingSettings())
    assert text == ""
    assert isinstance(final, ChatError)
    assert final.message.startswith("cannot build the prompt: image_url: the data URL does not hold a readable image")


def test_a_model_that_cannot_load_is_a_readable_error(tmp_path):
    (tmp_path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}')
    _, final = reply(TransformersBackend(tmp_path, loader=load_model), [user_message("hi")], SamplingSettings())
    assert isinstance(final, ChatError)
    assert final.message.startswith(f"cannot load the model from {tmp_path}")


def test_a_checkpoint_that_fails_its_probe_is_an_error_naming_it_never_a_reply(demo_model_dir, tmp_path):
    broken = tmp_path / "inf-embeddings"
    shutil.copytree(demo_model_dir, broken)
    tensors = load_file(broken / "model.safetensors")
    name = next(k for k in tensors if k.endswith("language_model.embed_tokens.weight"))
    tensors[name][:, 0] = float("inf")  # every token: the logits cannot be finite
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    text, final = reply(TransformersBackend(broken), [user_message("hi")], SamplingSettings(max_tokens=4, seed=0))
    assert text == ""
    assert isinstance(final, ChatError)
    assert final.message.startswith(f"cannot load the model from {broken}: BrokenModelError: {broken}: the loaded model gives")


def test_stop_while_waiting_for_another_models_construction(demo_model_dir):
    """Stopped while another load holds the construction lock: the reply ends at once, unloaded."""
    backend = TransformersBackend(demo_model_dir, name="waiting")
    stop = threading.Event()
    events = []
    with model_construction():  # another pane's load, as far as this backend can tell
        worker = threading.Thread(
            target=lambda: events.extend(backend.stream_chat([user_message("hi")], SamplingSettings(seed=0), stop))
        )
        worker.start()
        stop.set()
        worker.join(60)
        assert not worker.is_alive()  # ended although the lock is still held
    (final,) = events
    assert isinstance(final, GenerationStats) and final.finish_reason == "stopped" and final.output_tokens == 0
    assert backend.load_seconds is None and not backend.loading
    _, again = reply(backend, [user_message("hi")], SamplingSettings(max_tokens=2, seed=0))
    assert isinstance(again, GenerationStats) and again.finish_reason in ("length", "stop")
    assert backend.load_seconds > 0


def test_stop_while_another_session_generates_on_the_same_model(demo_backend):
    """A reply queued behind another reply on a shared backend stops without waiting for it."""
    first_stop, second_stop = threading.Event(), threading.Event()
    first = demo_backend.stream_chat([user_message("Go on")], SamplingSettings(max_tokens=300, seed=1), first_stop)
    assert isinstance(next(first), TextDelta)  # the first reply holds the model
    events = []
    worker = threading.Thread(
        target=lambda: events.extend(demo_backend.stream_chat([user_message("hi")], SamplingSettings(seed=0), second_stop))
    )
    worker.start()
    second_stop.set()
    worker.join(60)
    assert not worker.is_alive()
    (final,) = events
    assert isinstance(final, GenerationStats) and final.finish_reason == "stopped" and final.output_tokens == 0
    first_stop.set()
    assert list(first)[-1].finish_reason == "stopped"


def test_a_missing_checkpoint_is_an_input_error(tmp_path):
    with pytest.raises(ValueError, match="^model_dir: .* holds no config.json"):
        TransformersBackend(tmp_path)


def test_a_pruned_checkpoint_runs_through_an_injected_loader(demo_model_dir, tmp_path):
    # A FLAP-pruned checkpoint made by hand: every layer's FFN cut from 512 to its first 384
    # channels, with a compensating down_proj bias.
    model = load_model(demo_model_dir)
    text_config = text_config_of(model.config)
    width = 384
    for layer in decoder_layers(model):
        old, new = layer.mlp, FlapGemma4MLP(text_config.hidden_size, width, text_config.hidden_activation)
        with torch.no_grad():
            new.gate_proj.weight.copy_(old.gate_proj.weight[:width])
            new.up_proj.weight.copy_(old.up_proj.weight[:width])
            new.down_proj.weight.copy_(old.down_proj.weight[:, :width])
            new.down_proj.bias.fill_(0.01)
        layer.mlp = new
    mark_pruned(model, [width] * len(decoder_layers(model)))
    pruned = tmp_path / "pruned"
    model.save_pretrained(pruned)
    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json", "chat_template.jinja"):
        shutil.copy(demo_model_dir / name, pruned / name)

    calls = []

    def recording_loader(path):
        calls.append(path)
        return load_model(path)

    backend = TransformersBackend(pruned, loader=recording_loader)
    _, final = reply(backend, [user_message("Look", [picture()])], SamplingSettings(temperature=0, max_tokens=6))
    assert isinstance(final, GenerationStats), final
    assert calls == [pruned]
    assert backend._model.config.architectures == ["Gemma4FlapForConditionalGeneration"]
    assert decoder_layers(backend._model)[0].mlp.down_proj.weight.shape == (text_config.hidden_size, width)
    assert final.output_tokens >= 1


@pytest.fixture(scope="module")
def int4_dir(demo_model_dir, tmp_path_factory):
    from studio.gptq.quantize import quantize_checkpoint

    ids = torch.randint(16, 2000, (8, 64), generator=torch.Generator().manual_seed(0))
    out = tmp_path_factory.mktemp("int4") / "demo-int4"
    quantize_checkpoint(demo_model_dir, out, ids, {"dtype": "bfloat16"}, device="cpu")
    return out


def test_an_int4_export_answers_an_image_through_gptqmodel(int4_dir):
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear

    from studio.gptq.quantize import load_quantized

    backend = TransformersBackend(int4_dir, name="demo-int4", loader=load_quantized)
    messages = [user_message("What is in the picture?", [picture()])]
    first, final = reply(backend, messages, SamplingSettings(temperature=0, max_tokens=8))
    assert isinstance(final, GenerationStats), final
    assert final.prompt_tokens > IMAGE_SOFT_TOKENS // 2 and 1 <= final.output_tokens <= 8
    assert isinstance(decoder_layers(backend._model)[0].mlp.down_proj, BaseQuantLinear)  # packed INT4 weights
    again, _ = reply(backend, messages, SamplingSettings(temperature=0, max_tokens=8))
    assert first == again  # greedy decoding is deterministic
    assert backend.load_seconds > 0


def test_the_int4_model_generates_without_compiling(int4_dir):
    """GPTQModel's torch kernel compiles its dequantisation by default, once per module shape (per
    pruned width), which stalled the first replies on CPU; the studio's loader runs it eagerly."""
    from torch._dynamo.utils import counters

    from studio.gptq.quantize import load_quantized

    graphs_before = counters["stats"]["unique_graphs"]
    model = load_quantized(int4_dir)  # its probe forward counts too
    ids = torch.tensor([[2, 40, 41, 42]])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids.shape[1]
    assert counters["stats"]["unique_graphs"] == graphs_before


def test_sampler_keeps_only_the_sampled_token():
    scores = torch.tensor([[0.0, 5.0, 1.0, -2.0]])
    sampler = PrivateRngSampler(temperature=1.0, top_p=0.01, seed=0)  # top-p leaves the argmax only
    out = sampler(torch.zeros(1, 1, dtype=torch.long), scores)
    assert torch.isfinite(out).tolist() == [[False, True, False, False]]
    # Without top-p, draws follow softmax(scores): token 1 has probability 0.568, token 2 0.345.
    scores = torch.tensor([[0.0, 2.0, 1.5, -2.0]])
    draws = [int(PrivateRngSampler(1.0, 1.0, seed)(None, scores).argmax()) for seed in range(400)]
    assert abs(draws.count(1) / 400 - 0.568) < 0.08
    assert abs(draws.count(2) / 400 - 0.345) < 0.08
