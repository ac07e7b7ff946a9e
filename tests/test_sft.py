"""SFT: the loss covers completion tokens only, training lowers it, and the result is a causal LM."""

from __future__ import annotations

import json

import pytest
import torch

from tether.data.batching import collate_examples, tokenize_demonstrations
from tether.data.sft import Demonstration
from tether.models.loading import load_causal_lm, load_tokenizer
from tether.diagnostics.run import read_jsonl
from tether.train.sft import SFTConfig, completion_nll, train_sft


pytestmark = pytest.mark.usefixtures("one_thread")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_loss_is_the_mean_nll_of_completion_tokens_only():
    tokenizer = load_tokenizer("tiny-llama")
    model = load_causal_lm("tiny-llama")
    items, _ = tokenize_demonstrations([Demonstration("Hello", "ab"), Demonstration("Yo", "xyz")], tokenizer, 64)
    loss = completion_nll(model, collate_examples(items, tokenizer.pad_token_id))

    # by hand: run each sequence alone, unpadded; token at position i is predicted by logits[i - 1]
    nll, count = 0.0, 0
    for item in items:
        ids = torch.tensor([item.prompt + item.response])
        logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
        for i in range(len(item.prompt), ids.shape[1]):  # completion tokens only, EOS included
            nll -= logprobs[i - 1, ids[0, i]].item()
            count += 1
    assert count == 3 + 4  # "ab"+EOS, "xyz"+EOS; the 5 + 2 prompt tokens carry no loss
    assert loss.item() == pytest.approx(nll / count, abs=1e-5)


def test_prompt_tokens_get_no_gradient_signal_as_targets():
    # changing only the *prompt* of a demonstration changes the context but adds no loss terms:
    # with a one-token prompt the number of loss terms is the completion length
    tokenizer = load_tokenizer("tiny-llama")
    short, _ = tokenize_demonstrations([Demonstration("a", "ok")], tokenizer, 64)
    long, _ = tokenize_demonstrations([Demonstration("a much longer prompt", "ok")], tokenizer, 64)
    for items in (short, long):
        batch = collate_examples(items, tokenizer.pad_token_id)
        assert int(batch.response_mask.sum()) == 3  # "ok" + EOS


def test_sft_lowers_held_out_loss_and_saves_a_causal_lm(tmp_path):
    rows = [{"prompt": f"Q{i % 7}: say hi", "completion": "hi there!"} for i in range(40)]
    data = write_jsonl(tmp_path / "sft.jsonl", rows[::2])
    eval_data = write_jsonl(tmp_path / "eval.jsonl", rows[1::2])
    config = SFTConfig(data=str(data), eval_data=str(eval_data), epochs=6, batch_size=4, learning_rate=3e-3,
                       lr_schedule="constant", eval_every=5, output_dir=str(tmp_path / "runs"), run_name="s", quiet=True)
    path = train_sft(config)
    evals = [r["eval/loss"] for r in read_jsonl(tmp_path / "runs" / "s" / "metrics.jsonl") if "eval/loss" in r]
    # a random model is near-uniform over the 77-token vocabulary: NLL ≈ ln 77 = 4.34 per token
    assert evals[-1] < 0.5 * 4.34 and evals[-1] < evals[0], evals
    model = load_causal_lm(path)  # save_pretrained folder: AutoModelForCausalLM loads it
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (tmp_path / "runs" / "s" / "config.yaml").is_file()


def test_sft_cli_with_yaml_and_overrides(tmp_path, capsys):
    from tether.cli import main

    data = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": f"p{i}", "completion": "done"} for i in range(6)])
    yaml_path = tmp_path / "sft.yaml"
    yaml_path.write_text(f"data: {data}\nbatch_size: 2\nquiet: true\noutput_dir: {tmp_path / 'runs'}\n")
    assert main(["sft", "--config", str(yaml_path), "max_steps=2", "run_name=c"]) == 0
    assert "SFT model written to" in capsys.readouterr().out
    assert [r["iteration"] for r in read_jsonl(tmp_path / "runs" / "c" / "metrics.jsonl")] == [1, 2]


@pytest.mark.slow
def test_sft_on_smollm2_with_its_chat_template(tmp_path):
    """Real text through SmolLM2's chat template: conversational demonstrations, two steps."""
    rows = [{"messages": [{"role": "user", "content": "What is the capital of France?"},
                          {"role": "assistant", "content": "Paris."}]},
            {"prompt": "Name a primary colour.", "completion": "Red."}]
    data = write_jsonl(tmp_path / "sft.jsonl", rows)
    config = SFTConfig(model="smollm2", data=str(data), eval_fraction=0.0, max_steps=2, batch_size=2,
                       learning_rate=1e-5, output_dir=str(tmp_path), run_name="smol", quiet=True)
    path = train_sft(config)
    tokenizer = load_tokenizer(path)
    assert tokenizer.chat_template is not None
    losses = [r["train/loss"] for r in read_jsonl(tmp_path / "smol" / "metrics.jsonl")]
    assert len(losses) == 2 and all(0 < v < 20 for v in losses)
