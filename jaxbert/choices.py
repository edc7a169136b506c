"""The names a config may choose from, in one place that the config and the code implementing them both read.

Plain constants (no imports), so `jaxbert.config` can check a choice without importing what implements it.
Each tuple's first entry is the default where the config has one.
"""

DTYPES = ("float32", "bfloat16")
ATTENTION_KERNELS = ("auto", "xla", "cudnn")  # `jaxbert.modeling.Execution`
POOLINGS = ("cls", "pooler", "mean", "max")
PAIR_ENCODINGS = ("cross", "bi")  # how a sentence pair reaches the encoder: together, or each sentence alone
ENCODINGS = ("single", "cross", "bi", "triplet")
TASK_KINDS = ("classification", "regression")  # what a config's `task_defs` may define
STS_HEADS = ("cosine", "sigmoid_cosine", "cosine_concat", "linear")
COSINE_HEADS = ("cosine", "sigmoid_cosine")  # the STS heads that score a pair by a cosine
HEAD_ACTIVATIONS = ("relu", "gelu", "tanh", "squared_relu")
PAL_FUNCTIONS = ("attention", "identity")  # g of a PAL's TS(h) = V^D g(V^E h)
DATA_SOURCES = ("auto", "local", "hf")  # auto: a task's local files when its train file is there, else its Hub source
STEP_SHAPES = ("per_task", "step_max")  # what each task of a step pads to: its own bucket, or the step's longest
SAMPLERS = ("roundrobin", "sequential", "proportional", "annealed")
EPOCH_LENGTHS = ("min", "max", "steps")
LOSS_COMBINATIONS = ("sum", "mean", "weights", "balanced")
SCHEDULES = ("constant", "linear")
UPDATES = ("joint", "per_task")
NONFINITE = ("stop", "skip")  # what a step with a non-finite loss or gradient does to the run
GRADVAC_EMAS = ("raw", "projected")  # what GradVac's EMA targets follow: the raw cosine, or Algorithm 1's φ
OPTIMIZER_CARRIES = ("fresh", "carry")  # a stage's optimizer: a new one, or the stage before's
SURGERIES = ("none", "pcgrad", "pcgrad_two_updates", "gradvac", "cagrad", "mgda", "imtl_g")
CLASSIFICATION_LOSSES = ("ce", "ordinal")  # `losses.sst`: the loss of every softmax classification head
STS_LOSSES = ("mse", "cosine_embedding")
SMART_NORMS = ("inf", "l2")
SMART_ASCENTS = ("projected", "normalized")
# The keys a `sweep:` may vary inside one compiled program (each is a number the step multiplies by), and the
# short name each has in a member's folder name.
SWEEP_KEYS = {"train.lr": "lr", "losses.supcon_weight": "supcon_weight", "losses.simcse_weight": "simcse_weight",
              "smart.weight": "smart_weight", "smart.bregman_weight": "bregman_weight"}
