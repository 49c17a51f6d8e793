"""The `sft:` config section of `scirl sft` (supervised fine-tuning on conversations, scirl.sft). Everything else an
SFT run reads is shared with `scirl train`: model.* (path, dtype, lora), actor.{lr, weight_decay, betas,
warmup_steps, lr_scheduler, min_lr_ratio, grad_clip, fsdp, gradient_checkpointing}, trainer.* (run folder,
checkpoints, resume, seed, launcher, loggers), and, with sft.rollout_eval, data.val + reward.name + rollout.* for
the rollout evaluation before and after training. rollout.agent.chat_template also sets the template the
conversations are tokenized with.

The run's length is sft.epochs x ceil(conversations / sft.batch_size) optimizer steps (sft.max_steps > 0 replaces
it); `scirl sft` records that count as trainer.total_steps in the run's config.yaml, so trainer.total_steps is not
set by the user in an SFT run (one-line refusal)."""

from __future__ import annotations

from dataclasses import dataclass

from scirl.errors import ScirlError

TRUNCATION = ("drop", "error")


@dataclass
class SFTConfig:
    train: str = ""  # local .json (a list of rows) / .jsonl / .parquet of rows with `messages` (+ optional `tools`)
    val: str = ""  # the same format: loss on it before and after training ("": none)
    epochs: int = 1
    max_steps: int = 0  # optimizer steps (0: sft.epochs decide)
    batch_size: int = 8  # conversations per optimizer step, global (all ranks together)
    micro_batch_tokens: int = 4096  # conversations per forward, up to this many tokens (packing=false pads them to
    # the longest, so a padded forward may hold more positions)
    packing: bool = True  # padding-free: a micro-batch is one row of whole conversations, position_ids restart at 0
    max_length: int = 4096  # tokens per conversation (prompt, tool turns and answers together)
    truncation: str = "drop"  # a longer conversation: drop (counted) | error
    messages_key: str = "messages"  # the row field holding the conversation
    tools_key: str = "tools"  # the row field holding the tools' JSON schemas (rendered with the template's tools=)
    rollout_eval: bool = False  # the rollout evaluation of scirl train before and after training: data.val with
    # reward.name, rollout.val_n / val_temperature / max_new_tokens, rollout.agent (tools) as configured


def check_sft(cfg) -> None:
    """Checks between SFT keys (ranges are in config_ranges.py): one line naming the key."""
    s = cfg.sft
    if s.truncation not in TRUNCATION:
        raise ScirlError(f"sft.truncation={s.truncation!r} must be one of {', '.join(TRUNCATION)}")
    if s.micro_batch_tokens < s.max_length:
        raise ScirlError(f"sft.micro_batch_tokens={s.micro_batch_tokens} must be >= sft.max_length={s.max_length}: "
                         "a micro-batch holds at least one whole conversation")
    if not s.messages_key.strip():
        raise ScirlError("sft.messages_key is empty: name the row field holding the conversation")


def check_sft_run(cfg) -> None:
    """What `scirl sft` needs beyond the config's own checks (before any process starts)."""
    from scirl.config import TrainerConfig

    if not cfg.sft.train:
        raise ScirlError("sft.train is empty: set it to a local .json / .jsonl / .parquet file of rows with "
                         f"'{cfg.sft.messages_key}' (+ optional '{cfg.sft.tools_key}')")
    if cfg.trainer.total_steps != TrainerConfig().total_steps:
        raise ScirlError(f"trainer.total_steps={cfg.trainer.total_steps} is not used by scirl sft: the run length is "
                         "sft.epochs (or sft.max_steps > 0); remove trainer.total_steps")
