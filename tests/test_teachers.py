"""Teachers: EMA update arithmetic, frozen weights, log-probs = the student's at init, the external teacher's
tokenizer check."""

import copy
import json
import shutil

import pytest
import torch

from scirl.data.prompts import tokenize_prompts
from scirl.data.synthetic import make_problems
from scirl.errors import ScirlError
from scirl.rollout.base import SamplingParams
from scirl.rollout.hf_engine import HFRolloutEngine
from scirl.train.logprobs import batched_logprobs
from scirl.train.model_loading import ASSETS
from scirl.train.teachers import EMATeacher, ExternalTeacher, FrozenReference


class TwoScalars(torch.nn.Module):
    def __init__(self, a, b):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(float(a)))
        self.b = torch.nn.Parameter(torch.tensor(float(b)))


def _values(module):
    return [float(p.detach()) for p in module.parameters()]


def test_ema_update_matches_hand_computation():
    teacher = EMATeacher(TwoScalars(1, 2))
    student = TwoScalars(3, -2)
    teacher.update(student, 0.25)
    assert _values(teacher.model) == pytest.approx([1.5, 1.0])  # 0.75*1 + 0.25*3, 0.75*2 + 0.25*(-2)
    with torch.no_grad():
        student.a.fill_(5.5)
    teacher.update(student, 0.5)
    assert _values(teacher.model) == pytest.approx([3.5, -0.5])  # 0.5*1.5 + 0.5*5.5, 0.5*1 + 0.5*(-2)
    assert _values(student) == [5.5, -2.0]  # the student is untouched
    sd = teacher.state_dict()
    other = EMATeacher(TwoScalars(0, 0))
    other.load_state_dict(sd)
    assert _values(other.model) == pytest.approx([3.5, -0.5])
    assert not any(p.requires_grad for p in other.model.parameters())
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ScirlError, match="distill.teacher_update_rate"):
            teacher.update(student, bad)


def test_frozen_teacher_gets_no_grad_and_student_steps_do_not_move_it():
    student = TwoScalars(1, 2)
    teacher = EMATeacher(student)
    assert not any(p.requires_grad for p in teacher.model.parameters()) and not teacher.model.training
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    loss = (student.a * 3 + student.b**2 + teacher.model.a * teacher.model.b).sum()
    loss.backward()
    opt.step()
    assert _values(student) != [1.0, 2.0]
    assert _values(teacher.model) == [1.0, 2.0]
    assert all(p.grad is None for p in teacher.model.parameters())


@pytest.fixture(scope="module")
def small_batch(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    _, ids, _ = tokenize_prompts(make_problems("val", 2, seed=0), tok, 256, False, "data.val")
    torch.manual_seed(0)
    return HFRolloutEngine(model, tok).generate(ids, ["a", "b"], SamplingParams(n=2, max_new_tokens=8))


def test_ema_teacher_of_tiny_model_rates_zero_and_one(tiny_model_and_tokenizer):
    model, _ = tiny_model_and_tokenizer
    teacher = EMATeacher(model, micro_batch_size=2, temperature=1.0)
    student = copy.deepcopy(model)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    teacher.update(student, 0.0)
    for (name, t), p in zip(teacher.model.named_parameters(), model.parameters()):
        assert torch.equal(t, p), name
    teacher.update(student, 1.0)
    for (name, t), p in zip(teacher.model.named_parameters(), student.parameters()):
        assert torch.equal(t, p), name
    assert not any(p.requires_grad for p in teacher.model.parameters())


def test_ema_teacher_logprobs_equal_student_at_init_and_log_softmax_gathers_to_them(
        tiny_model_and_tokenizer, small_batch):
    model, _ = tiny_model_and_tokenizer
    traj = small_batch
    assert len(traj) == 4 and traj.response_ids.shape[1] <= 8
    teacher = EMATeacher(model, micro_batch_size=3, temperature=0.7)
    expected = batched_logprobs(model, traj, 2, 0.7)
    got = teacher.logprobs(traj)
    assert got.shape == traj.response_ids.shape and got.device.type == "cpu"
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert bool((got[traj.response_mask == 0] == 0).all())
    full = teacher.log_softmax(traj.prompt_ids, traj.prompt_mask, traj.response_ids)
    assert full.shape[:2] == traj.response_ids.shape and not full.requires_grad
    gathered = full.gather(2, traj.response_ids.unsqueeze(-1)).squeeze(-1) * traj.response_mask
    torch.testing.assert_close(gathered, got, atol=1e-5, rtol=1e-5)


def test_frozen_reference_has_the_common_methods(small_batch):
    ref = FrozenReference("builtin:tiny-qwen3", "float32", "cpu", "sdpa", 4, 1.0)
    lp = ref.logprobs(small_batch)
    full = ref.log_softmax(small_batch.prompt_ids, small_batch.prompt_mask, small_batch.response_ids)
    gathered = full.gather(2, small_batch.response_ids.unsqueeze(-1)).squeeze(-1) * small_batch.response_mask
    torch.testing.assert_close(gathered, lp, atol=1e-5, rtol=1e-5)


def _teacher_folder(tmp_path, edit):
    folder = tmp_path / "teacher"
    shutil.copytree(ASSETS / "tiny-qwen3", folder)
    data = json.loads((folder / "tokenizer.json").read_text())
    edit(data)
    (folder / "tokenizer.json").write_text(json.dumps(data))
    return str(folder)


def test_external_teacher_loads_and_checks_the_tokenizer(tmp_path, tiny_model_and_tokenizer, small_batch):
    model, tok = tiny_model_and_tokenizer
    teacher = ExternalTeacher("builtin:tiny-qwen3", "float32", "cpu", "sdpa", 4, 1.0, tok)
    assert not any(p.requires_grad for p in teacher.model.parameters())
    torch.testing.assert_close(teacher.logprobs(small_batch), batched_logprobs(model, small_batch, 4, 1.0))

    def swap_two(data):  # same size, two entries exchanged
        vocab = data["model"]["vocab"]
        a, b = sorted(vocab, key=vocab.get)[100:102]
        vocab[a], vocab[b] = vocab[b], vocab[a]

    with pytest.raises(ScirlError) as err:
        ExternalTeacher(_teacher_folder(tmp_path, swap_two), "float32", "cpu", "sdpa", 4, 1.0, tok)
    msg = str(err.value)
    assert msg.startswith("distill.teacher_path: the teacher's tokenizer differs from the student's (first differing")
    assert "share one tokenizer" in msg and "\n" not in msg


def test_external_teacher_extra_token_and_missing_path(tmp_path, tiny_model_and_tokenizer):
    _, tok = tiny_model_and_tokenizer

    def add_token(data):
        data["added_tokens"].append({"id": 517, "content": "<extra>", "single_word": False, "lstrip": False,
                                     "rstrip": False, "normalized": False, "special": True})

    with pytest.raises(ScirlError, match=r"vocab sizes 518 vs 517"):
        ExternalTeacher(_teacher_folder(tmp_path, add_token), "float32", "cpu", "sdpa", 4, 1.0, tok)
    with pytest.raises(ScirlError, match="^distill.teacher_path: model path not found"):
        ExternalTeacher(str(tmp_path / "nope"), "float32", "cpu", "sdpa", 4, 1.0, tok)
