"""Config sections for the runtimes around the RL loop: LoRA / 4-bit QLoRA, the agent loop and its tools, the code
sandbox, and the Ray launcher. `scirl.config.Config` holds them; they live here to keep config.py to the core keys."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LoraConfig:
    """LoRA adapters (peft) on the policy: rank 0 trains full weights. The reference policy for KL is the same
    module with the adapter disabled; checkpoints' model/ holds the adapter folder (scirl.train.lora)."""

    rank: int = 0  # 0 = off
    alpha: float = 16.0  # scaling alpha / rank
    dropout: float = 0.0
    target_modules: list = field(default_factory=lambda: ["q_proj", "v_proj"])  # names of linear layers
    modules_to_save: list = field(default_factory=list)  # modules trained in full and saved with the adapter


@dataclass
class QuantizationConfig:
    """4-bit QLoRA (bitsandbytes): the base is quantised at load and frozen; only the LoRA adapter trains, so it
    needs model.lora.rank > 0 (scirl.train.quantize)."""

    load_in_4bit: bool = False
    bnb_4bit_quant_type: str = "nf4"  # nf4 | fp4
    bnb_4bit_compute_dtype: str = "float32"  # float32 | bfloat16 | float16: the dtype the 4-bit matmuls run in
    double_quant: bool = False  # quantise the quantisation constants too (bnb_4bit_use_double_quant)


@dataclass
class AgentConfig:
    """Multi-turn rollouts with Hermes tool calls (scirl.agent; on the train and validation engines)."""

    enable: bool = False
    tools: list = field(default_factory=lambda: ["code_interpreter"])  # built-ins or module:function specs
    max_turns: int = 16  # model turns per sample
    max_response_len: int = 0  # tokens across all turns, model + tool (0: rollout.max_new_tokens)
    max_tool_response_len: int = 2048  # characters of one tool result the model reads
    tool_timeout: float = 10.0  # seconds per tool call
    chat_template: str = ""  # a jinja file that replaces the tokenizer's chat template (one that renders tools=)


@dataclass
class SandboxConfig:
    """Untrusted code (code_interpreter, code rewards): scirl.sandbox. Limits are per run."""

    tier: str = "auto"  # auto (strongest available) | bwrap | landlock | unsafe
    allow_unsafe: bool = False  # with neither bubblewrap nor Landlock, run with only rlimits + timeouts
    bwrap: str = "/usr/bin/bwrap"  # the bubblewrap binary (apt-get install bubblewrap)
    user_prefix: str = "scirl-sbx"  # worker i runs as user <prefix><i> (created by .ci/run; root only)
    workers: int = 4  # parallel sandboxes, each with its own uid
    timeout: float = 10.0  # seconds of wall clock per run (exceeded: killed, return code 124)
    memory_mb: int = 1024  # address space (RLIMIT_AS)
    cpu_seconds: int = 5  # RLIMIT_CPU
    max_processes: int = 64  # RLIMIT_NPROC of the worker's uid
    file_size_mb: int = 64  # largest file the program may write (RLIMIT_FSIZE)
    disk_mb: int = 64  # size of each of the tmpfs /tmp and work dir (bwrap tier)
    max_fds: int = 256  # RLIMIT_NOFILE
    max_output_bytes: int = 1048576  # stdout + stderr kept; more kills the run (truncated)
    cgroup: str | bool = "auto"  # auto: a cgroup per run (memory_mb for all its processes, max_processes) where
    #                              root and a writable cgroup v2 / v1 hierarchy allow it, else none (logged) | off
    #                              (YAML reads a bare `off` as false: the same)


@dataclass
class RayConfig:
    """trainer.launcher=ray: Ray only places and starts the training processes (one actor per rank)."""

    address: str | None = None  # null: start a local Ray instance | auto: the running cluster | ray://host:port
    num_cpus_per_worker: float = 1.0
    num_gpus_per_worker: float | None = None  # null: 1 when CUDA is present, else 0
    object_store_memory: int | None = None  # bytes, local instance only (null: Ray's default)
