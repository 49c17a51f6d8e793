"""`scirl serve`'s token-level endpoints on a real server subprocess (the bundled tiny model): POST /v1/completions
(shape, token ids, log-probs, echo, top log-probs, seeds, bad requests), POST /tokenize, POST /update_weights on bad
input (the served weights stay as they were), GET /health's update_weights flag."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from test_serve import http, running_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("serve")) as srv:
        yield srv


def complete(srv, **body):
    return http("POST", srv.url + "/v1/completions", {"model": srv.model_id, **body})


def test_completion_shape_token_ids_logprobs_and_seed(server, tiny_model_and_tokenizer):
    tok = tiny_model_and_tokenizer[1]
    status, out = complete(server, prompt="The answer is", n=2, max_tokens=6, seed=3, logprobs=0,
                           return_token_ids=True)
    assert status == 200, out
    assert out["object"] == "text_completion" and out["id"].startswith("cmpl-") and out["model"] == server.model_id
    prompt_ids = tok.encode("The answer is")
    assert [c["index"] for c in out["choices"]] == [0, 1]
    for c in out["choices"]:
        assert c["prompt_token_ids"] == prompt_ids and 1 <= len(c["token_ids"]) <= 6
        assert c["finish_reason"] in ("stop", "length") and c["text"] == tok.decode(c["token_ids"],
                                                                                    skip_special_tokens=True)
        lp = c["logprobs"]
        assert lp["tokens"] == [tok.decode([t]) for t in c["token_ids"]] and lp["top_logprobs"] is None
        assert len(lp["token_logprobs"]) == len(c["token_ids"]) and all(x <= 0 for x in lp["token_logprobs"])
        assert lp["text_offset"][0] == 0
    usage = out["usage"]
    assert usage == {"prompt_tokens": len(prompt_ids), "completion_tokens": sum(len(c["token_ids"])
                                                                                for c in out["choices"]),
                     "total_tokens": len(prompt_ids) + usage["completion_tokens"]}
    _, again = complete(server, prompt="The answer is", n=2, max_tokens=6, seed=3, logprobs=0, return_token_ids=True)
    assert [c["token_ids"] for c in again["choices"]] == [c["token_ids"] for c in out["choices"]]
    # token ids in, "token_id:N" out; without logprobs / return_token_ids neither is in the answer
    status, out = complete(server, prompt=prompt_ids, max_tokens=3, temperature=0, logprobs=0,
                           return_tokens_as_token_ids=True)
    (c,) = out["choices"]
    assert status == 200 and all(t.startswith("token_id:") for t in c["logprobs"]["tokens"]) and "token_ids" not in c
    status, out = complete(server, prompt=[prompt_ids], max_tokens=3, temperature=0)  # a batch of one
    assert status == 200 and out["choices"][0]["logprobs"] is None and out["choices"][0]["text"] == c["text"]


def test_echo_gives_prompt_logprobs_at_the_temperature(server, tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    ids = tok.encode("Let me think step by step.")
    status, out = complete(server, prompt=ids, max_tokens=0, echo=True, logprobs=2, temperature=0.5,
                           return_tokens_as_token_ids=True)
    assert status == 200, out
    (c,) = out["choices"]
    lp = c["logprobs"]
    assert lp["tokens"] == [f"token_id:{t}" for t in ids] and lp["token_logprobs"][0] is None
    assert c["text"] == tok.decode(ids) and c["finish_reason"] == "length" and out["usage"]["completion_tokens"] == 0
    with torch.no_grad():
        want = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1] / 0.5, -1)
    want_lp = want.gather(1, torch.tensor(ids[1:]).unsqueeze(1)).squeeze(1)
    assert (torch.tensor(lp["token_logprobs"][1:]) - want_lp).abs().max() < 1e-4
    assert lp["top_logprobs"][0] is None and all(len(d) == 2 for d in lp["top_logprobs"][1:])
    best = want.topk(1, -1).indices[:, 0].tolist()
    assert [max(d, key=d.get) for d in lp["top_logprobs"][1:]] == [f"token_id:{t}" for t in best]


def test_bad_completion_requests(server):
    cases = [({}, "prompt"), ({"prompt": []}, "prompt"), ({"prompt": [[1, 2], [3]]}, "prompt"),
             ({"prompt": [1, "a"]}, "prompt"), ({"prompt": "x", "logprobs": 6}, "logprobs"),
             ({"prompt": "x", "stop": ["\n"]}, "stop"), ({"prompt": "x", "stream": True}, "stream"),
             ({"prompt": "x", "echo": "yes"}, "echo"), ({"prompt": "x", "max_tokens": -1}, "max_tokens"),
             ({"prompt": [10**9]}, "prompt"), ({"prompt": "x", "n": 0}, "n")]
    for body, param in cases:
        status, err = complete(server, **body)
        assert status == 400 and err["error"]["param"] == param, (body, err)
    status, err = complete(server, prompt=[1] * 300)
    assert status == 400 and err["error"]["code"] == "context_length_exceeded"
    status, err = http("POST", server.url + "/v1/completions", {"model": "gpt-9", "prompt": "x"})
    assert status == 404 and err["error"]["code"] == "model_not_found"
    assert http("GET", server.url + "/v1/completions")[0] == 405


def test_tokenize_matches_the_model_tokenizer(server, tiny_model_and_tokenizer):
    tok = tiny_model_and_tokenizer[1]
    text = "12 × 7 = 84, \\boxed{84} 数学"
    status, out = http("POST", server.url + "/tokenize", {"model": server.model_id, "prompt": text,
                                                          "add_special_tokens": False})
    assert status == 200 and out["tokens"] == tok.encode(text, add_special_tokens=False)
    assert out["count"] == len(out["tokens"]) and out["max_model_len"] == 256
    assert http("POST", server.url + "/tokenize", {"prompt": 5})[0] == 400


def test_update_weights_refuses_bad_files_and_keeps_its_weights(server, tiny_model_and_tokenizer, tmp_path):
    model = tiny_model_and_tokenizer[0]
    assert server.health()["update_weights"] is True
    probe = {"prompt": [5, 6, 7, 8], "max_tokens": 0, "echo": True, "logprobs": 0}
    before = complete(server, **probe)[1]["choices"][0]["logprobs"]["token_logprobs"]
    (tmp_path / "junk.safetensors").write_text("not a safetensors file")
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    save_file({**sd, "model.norm.weight": torch.ones(3)}, str(tmp_path / "shape.safetensors"))
    save_file({k: v for k, v in sd.items() if k != "lm_head.weight"}, str(tmp_path / "missing.safetensors"))
    save_file({**sd, "extra.weight": torch.ones(1)}, str(tmp_path / "extra.safetensors"))
    for body, message in [({}, "the body must be"), ({"path": str(tmp_path / "nope")}, "no such file"),
                          ({"path": str(tmp_path / "junk.safetensors")}, "cannot read"),
                          ({"path": str(tmp_path / "shape.safetensors")}, "wrong shape, e.g. model.norm.weight"),
                          ({"path": str(tmp_path / "missing.safetensors")}, "missing 1 ['lm_head.weight']"),
                          ({"path": str(tmp_path / "extra.safetensors")}, "unexpected 1 ['extra.weight']")]:
        status, err = http("POST", server.url + "/update_weights", body)
        assert status == 400 and message in err["error"]["message"], (body, err)
    assert complete(server, **probe)[1]["choices"][0]["logprobs"]["token_logprobs"] == before
    save_file({k: v.clone() for k, v in sd.items()}, str(tmp_path / "same.safetensors"))
    status, out = http("POST", server.url + "/update_weights", {"path": str(tmp_path / "same.safetensors")})
    assert status == 200 and out == {"status": "ok", "loaded": len(sd)}
    assert complete(server, **probe)[1]["choices"][0]["logprobs"]["token_logprobs"] == before


def test_read_only_server_refuses_weights(tmp_path):
    with running_server(tmp_path, "--read-only") as srv:
        assert srv.health()["update_weights"] is False
        status, err = http("POST", srv.url + "/update_weights", {"path": "/x"})
        assert status == 403 and err["error"]["code"] == "read_only" and "--read-only" in err["error"]["message"]
