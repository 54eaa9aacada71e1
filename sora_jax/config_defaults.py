"""Every configurable field of sora_jax, with its default.

Config files under `configs/` start from `base_config()` and change what their target
needs; nothing outside this file invents new keys: the returned config is locked, so a
key a config file sets that is not here, like an unknown `--config.x.y=v`, is a clear
error.

The docs' configuration reference is generated from this file (scripts/config_doc.py),
so each field's comment here is its documentation.
"""
import ml_collections

C = ml_collections.ConfigDict


def base_config() -> ml_collections.ConfigDict:
  """Returns the full default config (the CPU ShapesWorld demo sizes)."""
  cfg = C()
  cfg.seed = 0  # Global seed: parameters, noise, data order all derive from it.

  # ---------------------------------------------------------------- data
  cfg.data = C()
  cfg.data.name = "shapes_world"  # 'shapes_world' or 'video_folder'.
  cfg.data.data_dir = ""  # Where built TFDS data sets live; '' means WORKDIR/data.
  # (frames x height x width) buckets, comma separated; frames must be 1+4k.
  cfg.data.buckets = "17x32x32,1x32x32"
  cfg.data.num_train = 2000  # ShapesWorld training clips (spread over buckets).
  cfg.data.num_val = 128  # ShapesWorld validation clips.
  cfg.data.two_object_fraction = 0.5  # Share of ShapesWorld clips with two objects.
  cfg.data.seed = 0  # ShapesWorld content seed (apart from `seed`, so new runs reuse built data).
  cfg.data.build_workers = 0  # Processes rendering / decoding clips in --mode=data (0: all cores).
  cfg.data.fps = 8  # Frames per second clips are resampled to / written at.
  cfg.data.video_dir = ""  # video_folder: folder (local or gs://) of videos + captions.
  cfg.data.val_fraction = 0.05  # video_folder: share of videos (at least one) held out for validation.
  cfg.data.clips_per_video = 0  # video_folder: most clips cut from one video (0: all that fit).
  cfg.data.caption_field = "both"  # Text that conditions training: "caption", "prompt", or "both" (per sample, 50:50).
  cfg.data.batch_size = 16  # Global batch size (all processes together).
  cfg.data.shuffle_seed = 0  # Seed of the epoch shuffles.
  cfg.data.worker_count = 0  # Grain worker processes (0: in the main process).
  cfg.data.prefetch = 2  # Batches prefetched per worker / main thread.
  cfg.data.bucket_weights = ""  # Comma-separated sampling weights per bucket; '' = by size.
  # Train on only the first N records of the train split (shared over buckets by size; 0: all),
  # e.g. to measure repetition (N clips seen many times) against a large set at equal compute.
  cfg.data.train_records = 0
  # --mode=encode also stores, per clip, the text states of its prompt and caption with the
  # two objects' names exchanged (shapes_world.swap_subjects): the negatives that
  # diffusion.binding_weight trains against. ShapesWorld only (its specs name the objects).
  cfg.data.binding_negatives = False
  # What the negatives exchange: 'color_shape' (size, motion and position change hands),
  # 'object' (the size word too: only motion and position change hands) or 'motion' (only
  # the motion phrases of a prompt whose two objects both move; names, sizes and order of
  # mention stay; captions get none).
  cfg.data.binding_swap = "color_shape"
  # --mode=encode also stores, per clip and latent cell, the share of its pixels that belong
  # to an object of each motion or to the background (shapes_world.motion_label_map): what
  # diffusion.motion_weight teaches dit.motion_head to predict per token. ShapesWorld only.
  cfg.data.motion_labels = False

  # ---------------------------------------------------------------- video VAE
  cfg.vae = C()
  cfg.vae.base_dim = 16  # Channels of the first stage (Wan 2.1: 96).
  cfg.vae.z_dim = 16  # Latent channels (Wan 2.1: 16).
  cfg.vae.dim_mult = (1, 2, 4)  # Channel multiplier per stage; len-1 downsamplings.
  cfg.vae.num_res_blocks = 1  # Residual blocks per stage (Wan 2.1: 2).
  cfg.vae.attn_scales = ()  # Scales with spatial attention (Wan 2.1: none).
  cfg.vae.temporal_downsample = (True, True)  # Which downsamplings also halve time.
  cfg.vae.dropout = 0.0  # Dropout in the VAE residual blocks (training only).
  cfg.vae.latents_mean = ()  # Per-channel latent mean (Wan 2.1 ships one); () = learned stats.
  cfg.vae.latents_std = ()  # Per-channel latent std; () = use statistics from `encode`.
  cfg.vae.chunk_frames = 4  # Latent-frame chunk for chunked encode/decode (memory bound).
  # Parameter-free average-down / repeat-up paths around every resample (Wan 2.2 style):
  # much faster VAE training; Wan 2.1 weights need False (configs/wan2_1_t2v_1_3b.py).
  cfg.vae.resample_shortcuts = True
  # Initial posterior log-variance (bias of the encoder's last 1x1 conv). 0 makes the
  # training latent mean + N(0, 1) noise at the start; with a tiny KL weight the encoder
  # must first learn to shrink it, and the decoder trains on noisy latents meanwhile.
  # -6 (std 0.05): +1.3 dB validation PSNR at 500 steps, +0.4 dB at 1000 (docs/results.md).
  cfg.vae.logvar_init = -6.0

  cfg.vae_train = C()
  cfg.vae_train.lr = 1e-3  # Peak AdamW learning rate of the VAE.
  cfg.vae_train.warmup_steps = 100  # Linear warm-up steps before the cosine decay.
  cfg.vae_train.weight_decay = 0.0  # AdamW weight decay.
  cfg.vae_train.grad_clip = 1.0  # Global-norm gradient clipping (0: off).
  cfg.vae_train.batch_size = 8  # Global VAE batch (clips or images; one bucket per batch).
  cfg.vae_train.l1_weight = 0.1  # Weight of the L1 reconstruction term.
  cfg.vae_train.l2_weight = 1.0  # Weight of the L2 reconstruction term.
  cfg.vae_train.kl_weight = 1e-6  # Weight of the KL term (small: a nearly deterministic latent).
  cfg.vae_train.disc_start = -1  # Step the 3D patch discriminator starts (-1: never).
  cfg.vae_train.disc_weight = 0.1  # Weight of the adversarial term once the discriminator starts.
  cfg.vae_train.ema_decay = 0.999  # EMA of VAE weights (encode/sample/eval use the EMA).
  cfg.vae_train.max_frames = 9  # Train on random windows of this many frames (1+4k; 0 = whole clips).
  cfg.vae_train.crop_size = 0  # Train on random square crops of this many pixels (a multiple of the VAE's spatial factor; 0 = whole frames).

  # ---------------------------------------------------------------- text encoder
  cfg.text = C()
  cfg.text.encoder = "minilm"  # 'minilm' (all-MiniLM-L6-v2), 'umt5' or 't5' (Flax, local weights).
  cfg.text.path = ""  # Folder (local or gs://) of HF safetensors for umt5/t5; '' for minilm (package).
  # Tokens kept per caption (padded / truncated). ShapesWorld captions run to ~80 MiniLM
  # tokens (two objects); at 32 every two-object caption lost its end. Encode reports any cut.
  cfg.text.max_length = 80
  cfg.text.dim = 384  # Hidden size the encoder emits (must match the encoder).
  # One pooled token per clause of the text after its token states (0 = none): each clause
  # encoded alone and mean-pooled, so all that is said of one subject sits in one
  # cross-attention key (models/text_encoder.py).
  cfg.text.clause_tokens = 0
  # Where a text splits into clauses (a regex; non-capturing groups only): sentence ends,
  # and ", " or "and / while / as / with" before a new subject.
  cfg.text.clause_split = (r"[.;!?]\s+|(?:,\s+|,?\s+(?:and|while|as|with)\s+)"
                           r"(?=(?:a|an|one|the|two|small|little|tiny|large|big)\s)")
  cfg.text.dtype = "float32"  # umt5/t5 weight + compute dtype ('bfloat16' halves umT5-XXL); outputs are float32.

  # ---------------------------------------------------------------- diffusion transformer
  cfg.dit = C()
  cfg.dit.patch_size = (1, 2, 2)  # (t, h, w) patch over latents.
  cfg.dit.dim = 192  # Hidden width.
  cfg.dit.ffn_dim = 768  # MLP hidden width.
  cfg.dit.num_heads = 4  # Attention heads (head dim = dim / num_heads, split over t, h, w by RoPE).
  cfg.dit.num_layers = 6  # Transformer blocks.
  cfg.dit.freq_dim = 256  # Sinusoidal timestep embedding size.
  cfg.dit.qk_norm = True  # RMS-norm on queries and keys.
  cfg.dit.cross_attn_norm = True  # LayerNorm before cross-attention (Wan).
  cfg.dit.eps = 1e-6  # Norm epsilon.
  cfg.dit.dropout = 0.0  # Dropout on attention/MLP outputs when training (Wan: 0).
  cfg.dit.rope_theta = 10000.0  # 3D RoPE base (Wan: 10000).
  cfg.dit.scan_layers = True  # Layers under nn.scan (one compiled block).
  # Layers per scan iteration; 0 = all: no loop, so no stacking of the saved activations
  # (shapes_tiny train step -5 % CPU time, compile ~2.4x longer; docs/results.md).
  cfg.dit.scan_unroll = 1
  cfg.dit.remat_policy = "none"  # 'none', 'full', 'dots', 'dots_no_batch'.
  cfg.dit.dtype = "float32"  # Compute dtype: 'float32' or 'bfloat16'.
  cfg.dit.param_dtype = "float32"  # Parameter (and optimizer state) dtype.
  # Attention kernel: 'xla', 'cudnn' (GPU flash), 'splash' (TPU), 'blockwise'
  # (memory-linear), 'ulysses' / 'ring' (sequence parallel over mesh axis 'sequence').
  cfg.dit.attention = "xla"
  cfg.dit.attention_block = 512  # Block size for blockwise / ring attention.
  cfg.dit.text_mask = True  # Cross-attention skips padded text slots; False attends to all (Wan 2.1).
  # Add the pooled caption (sentence embedding) to the adaLN time conditioning: small
  # models learn to follow prompts much sooner. Wan 2.1 weights need False.
  cfg.dit.pooled_text = True
  # Trainable transformer blocks refining the projected text tokens before cross-attention
  # (HunyuanVideo's token refiner); they start as the identity. 0: none (Wan 2.1).
  cfg.dit.text_refiner_layers = 0
  # Initial value of the refiner's residual gates: 0 starts it as the identity (what a
  # warm start from a DiT without one needs); 1 lets its blocks act and learn at once.
  cfg.dit.text_refiner_gate_init = 0.0
  # Double-stream MMDiT blocks (SD3 / Flux / HunyuanVideo): the text tokens get their own
  # adaLN-modulated stream (q/k/v, output, MLP) and attend jointly with the video tokens in
  # one attention, in place of cross-attention. False: Wan 2.1's blocks.
  cfg.dit.joint_attention = False
  # A matching head (BLIP's image-text matching) on the final hidden states: one logit per
  # sample for whether the text fits the video, which diffusion.binding_loss='match'
  # trains. Sampling never reads it. False: none (Wan 2.1).
  cfg.dit.match_head = False
  # A motion head on the final hidden states: per video token, logits over ShapesWorld's
  # motions (shapes_world.MOTIONS) of the object the token shows, which
  # diffusion.motion_weight trains. Sampling never reads it. False: none (Wan 2.1).
  cfg.dit.motion_head = False
  # How many blocks' output the motion head reads: 0 (all of them, the final hidden states,
  # which the output layer reads too) or 1 .. num_layers - 1 (an inner layer, as REPA aligns
  # an early one: the later blocks can turn what the head asks for into the prediction).
  cfg.dit.motion_head_layer = 0

  # ---------------------------------------------------------------- objective
  cfg.diffusion = C()
  cfg.diffusion.prediction = "x0"  # What the network outputs: 'x0' or 'v' (loss is on v).
  # x0 prediction: the velocity error (x0_pred - x0) / t divides by max(t, this). 0.05 is
  # the velocity loss (weight 1/t^2 on the x0 error); 1.0 is the plain x0 MSE (weight 1,
  # which leaves the high-noise steps, where the caption decides the content, more weight):
  # at equal steps it used the caption more and matched more prompts (docs/results.md), so
  # the shipped model and the default train with it.
  cfg.diffusion.x0_loss_t_clip = 1.0
  cfg.diffusion.t_mean = 0.0  # Logit-normal timestep distribution.
  cfg.diffusion.t_std = 1.0  # Std of the logit-normal timestep distribution.
  # Share of training samples drawn uniform in [t_top, 1) instead (after the shift): the
  # noise levels where a clip no longer shows its motions, so only the text can say which
  # object makes which, get 3 % of the samples under the shipped recipe (docs/results.md).
  cfg.diffusion.t_top_frac = 0.0
  cfg.diffusion.t_top = 0.95  # Lowest noise level of those top draws.
  # Base timestep shift (training t and the sampling schedule); scaled by
  # sqrt(tokens / shift_base_tokens). Flat ShapesWorld scenes stay recognisable up to
  # high noise, so 1.0 left t > 0.8 (where the caption decides the content) to 8% of
  # samples and the DiT ignored the caption; 3.0 (t > 0.8 for 39%) follows it (docs/results.md).
  cfg.diffusion.shift = 3.0
  cfg.diffusion.shift_base_tokens = 80  # Token count at which the shift is diffusion.shift (17x32x32 demo clips).
  cfg.diffusion.shift_resolution_dependent = True  # Scale the shift with sequence length (else use diffusion.shift as is).
  cfg.diffusion.caption_dropout = 0.1  # Probability a caption is dropped (CFG).
  # Conditioning-mask mix: name=probability (normalised). Conditioned latent frames are clean (t=0).
  cfg.diffusion.cond_masks = "none=0.5,first=0.15,first_k=0.1,last_k=0.05,first_last=0.1,random=0.1"
  # Binding contrast (needs data encoded with data.binding_negatives): on video clips that
  # have a negative and t >= binding_t_min, a hinge on log(err(negative text) / err(text))
  # below log(1 + binding_margin), weighted binding_weight (0: off) and added to the loss.
  # It costs a forward and backward pass of half the batch on video steps.
  cfg.diffusion.binding_weight = 0.0
  cfg.diffusion.binding_margin = 0.1  # How much worse (0.1: 10 %) the negative text must predict the clip.
  cfg.diffusion.binding_t_min = 0.5  # Noise levels below this (content already visible) get no contrast.
  # Whose negatives the contrast uses: "caption", "prompt" or "both" (each sample's negative
  # is that of the text it trains with). Prompts carry no start positions, so "prompt" leaves
  # a swap of motions (and, with data.binding_swap='color_shape', sizes) as the only difference.
  cfg.diffusion.binding_field = "both"
  # Which DiT parameters the contrast trains: "all"; "text" (those acting on the text tokens
  # only: text embedders, refiner, cross-attention keys/values; dit.acts_on_text_only),
  # "text_tokens" (the same less the pooled-text MLP, which modulates every video token) or
  # "cross_attn" (also the cross-attention's query, output and input norm). Outside "all",
  # the hinge's gradient reaches that group alone (the video path and its Adam statistics
  # see the denoising loss only), at a forward and backward pass of half the batch more.
  cfg.diffusion.binding_grad = "all"
  # What the contrast trains: "hinge" (the hinge above, on the prediction's errors) or
  # "match": a logistic loss on the matching head's logits (dit.match_head), the text's
  # labelled 1 and the negative's 0, so the shared blocks must tell them apart while the
  # prediction is not pushed off its mean (binding_margin unused; binding_grad must be
  # "all"). It costs a forward and backward pass of half the batch more than "hinge".
  cfg.diffusion.binding_loss = "hinge"
  # Gradient surgery (PCGrad): where the contrast's gradient points against the denoising
  # loss's (negative dot product over all parameters), drop its component along the
  # latter, so the contrast cannot raise the denoising loss to first order. One backward
  # pass more on video steps; logs the two gradients' cosine (binding_cos).
  cfg.diffusion.binding_project = False
  # Dense motion supervision (needs dit.motion_head and data encoded with
  # data.motion_labels): on video clips' unconditioned frames, the cross-entropy of the
  # motion head's per-token logits against the motions of the objects each token shows
  # (tokens weighted by their object pixels; the background weighs nothing), weighted
  # motion_weight (0: off) and added to the loss. At high noise only the text can tell
  # which object makes which motion, so it asks for that binding directly, without pushing
  # the prediction off its mean. No extra pass: the head reads the step's own forward pass.
  cfg.diffusion.motion_weight = 0.0
  # Noise levels below this get no motion term: there the clip shows its motions, and the
  # head's demand on the blocks competes with fine detail (docs/results.md).
  cfg.diffusion.motion_t_min = 0.0
  # The motion term on a pass of its own instead: half the batch again, frame 0 given and
  # every other frame pure noise (t = 1), where the noised clip cannot show the motions and
  # only the text can say which object makes which (motion_t_min unused). It costs a
  # forward and backward pass of half the batch on video steps.
  cfg.diffusion.motion_noise_pass = False

  # ---------------------------------------------------------------- training
  cfg.train = C()
  cfg.train.num_steps = 3000  # Steps to run to (train and train_vae).
  cfg.train.log_every = 50  # Steps between progress lines / metrics.jsonl rows.
  cfg.train.checkpoint_every = 500  # Steps between checkpoints (also saved at the end and on SIGTERM).
  cfg.train.keep_checkpoints = 3  # Newest checkpoints kept.
  cfg.train.lr = 1e-3  # Peak AdamW learning rate of the DiT.
  cfg.train.warmup_steps = 200  # Linear warm-up steps before the cosine decay.
  cfg.train.min_lr_ratio = 0.1  # Cosine decays to lr * min_lr_ratio.
  cfg.train.weight_decay = 0.01  # AdamW weight decay.
  cfg.train.b1 = 0.9  # AdamW beta1.
  cfg.train.b2 = 0.99  # AdamW beta2.
  cfg.train.grad_clip = 1.0  # Global-norm gradient clipping (0: off).
  cfg.train.ema_decay = 0.999  # EMA of DiT weights (sampling uses the EMA by default).
  cfg.train.lora_rank = 0  # >0: train only LoRA adapters of rank r on a loaded base (needs `weights`).
  cfg.train.lora_alpha = 16.0  # LoRA scale: the kernel delta is (lora_alpha / lora_rank) A @ B.
  cfg.train.lora_targets = "q,k,v,o"  # Adapted block kernels: q, k, v, o (self+cross attention), ffn.
  # Warm start: a sora_jax workdir (or its checkpoints/ folder) whose newest DiT checkpoint's
  # EMA weights start this run at step 0 with a fresh optimizer (e.g. pretrained/shapes).
  # Same dit.* shapes needed; a resumed run reads its own checkpoint, not this.
  cfg.train.init_from = ""
  cfg.train.tensorboard = True  # Also write TensorBoard event files under WORKDIR/tensorboard.
  # Held-out evaluation: steps between evaluations (0: at every checkpoint). The DiT's is
  # the velocity MSE of its EMA weights on validation clips (and, for the train/held-out
  # gap, on training clips) at fixed timesteps, noise, texts and no conditioning frames, so
  # any two runs on the same encoded data compare; the VAE's is validation PSNR/SSIM.
  cfg.train.eval_every = 0
  cfg.train.eval_clips = 64  # Fixed clips per split in each DiT evaluation (the same clips at any batch size).
  cfg.train.eval_timesteps = "0.1,0.3,0.5,0.7,0.9"  # Noise levels t of the DiT evaluation (logged as eval_loss_t<t>).

  # ---------------------------------------------------------------- sampling
  cfg.sample = C()
  cfg.sample.prompt = "a red circle moving left"  # The prompt (unless sample.prompts_file is set).
  cfg.sample.prompts_file = ""  # UTF-8, one prompt a line; overrides `prompt`.
  # JSON lines, one sampling job a line: sample.* fields over the command's, e.g.
  # {"task": "i2v", "image": "start.mp4", "prompt": "a red circle"}; every job of the file
  # runs in this one process (the models load and compile once) into one samples.json.
  cfg.sample.jobs_file = ""
  # t2v, t2i, i2v, extend, extend_backward, loop, interpolate, edit, long
  cfg.sample.task = "t2v"
  cfg.sample.num_frames = 17  # 1+4k.
  cfg.sample.height = 32  # Pixels; a multiple of the VAE factor times the patch size.
  cfg.sample.width = 32  # Pixels; e.g. 48 for widescreen at height 32.
  cfg.sample.seed = 0  # Sample i of a run uses seed + i (its own noise, whatever the batch).
  cfg.sample.steps = 30  # ODE solver steps.
  cfg.sample.solver = "euler"  # 'euler' or 'heun'.
  cfg.sample.shift = -1.0  # Sampling schedule shift; <0: the training rule for this size.
  cfg.sample.cfg_scale = 4.0  # Classifier-free guidance scale (1: no guidance).
  cfg.sample.use_ema = True  # Sample with the EMA weights.
  cfg.sample.image = ""  # i2v / interpolate / loop start image (or clip) path; loop samples one without it.
  cfg.sample.end_image = ""  # interpolate end image (or clip) path.
  cfg.sample.video = ""  # extend / extend_backward / edit source clip path.
  cfg.sample.strength = 0.7  # edit: how far toward noise the input is pushed (0..1).
  cfg.sample.cond_frames = 5  # extend: how many given pixel frames condition the new ones.
  cfg.sample.long_window = 17  # long: frames per window.
  cfg.sample.long_overlap = 5  # long: frames shared between consecutive windows.
  cfg.sample.output_dir = ""  # '' means WORKDIR/samples.
  cfg.sample.batch_size = 8  # Samples denoised together.
  cfg.sample.gif = True  # Also write a .gif beside each .mp4.

  # ---------------------------------------------------------------- evaluation
  cfg.eval = C()
  cfg.eval.num_prompts = 32  # Validation prompts sampled for adherence.
  cfg.eval.num_vae_clips = 64  # Validation clips for VAE PSNR/SSIM.
  cfg.eval.tasks = "t2v,i2v,extend,interpolate,loop"  # Task-fidelity figures computed.
  cfg.eval.steps = 30  # Solver steps of the evaluation samples.
  cfg.eval.cfg_scale = 4.0  # Guidance scale of the evaluation samples.

  # ---------------------------------------------------------------- mesh / sharding
  cfg.mesh = C()
  cfg.mesh.data = -1  # -1 fills with the devices left.
  cfg.mesh.fsdp = 1  # Fully-sharded data parallel: batch and parameters (embed) split.
  cfg.mesh.sequence = 1  # Sequence parallel: spacetime tokens split (ulysses / ring attention).
  cfg.mesh.tensor = 1  # Tensor parallel: heads and MLP split.
  cfg.mesh.dcn_data = 1  # Multi-slice: data-parallel replicas across slices (DCN).
  # Logical axis -> mesh axes. Parameters and activations name logical axes only.
  cfg.mesh.rules = (
      ("batch", ("data", "fsdp")),
      ("tokens", "sequence"),
      ("embed", "fsdp"),
      ("heads", "tensor"),
      ("mlp", "tensor"),
      ("kv", None),
      ("text_tokens", None),
      ("layers", None),
      ("channels", None),
  )

  # ---------------------------------------------------------------- benchmark
  cfg.benchmark = C()
  cfg.benchmark.batch_size = 8  # Global batch of the synthetic benchmark.
  cfg.benchmark.num_frames = 17  # Pixel frames of the synthetic clips.
  cfg.benchmark.height = 32  # Pixel height of the synthetic clips.
  cfg.benchmark.width = 32  # Pixel width of the synthetic clips.
  cfg.benchmark.steps = 20  # Timed steps (median reported) after warm-up.
  cfg.benchmark.warmup = 3  # Untimed steps before timing.
  cfg.benchmark.matmul_size = 2048  # Peak FLOP/s probe matrix size.

  # ---------------------------------------------------------------- compile (TPU, ahead of time)
  cfg.compile = C()
  cfg.compile.topology = "v5:2x2x2"  # libtpu topology to compile for: v5:XxYxZ (v5p), v5e:XxY, v6e:XxY.
  cfg.compile.num_slices = 1  # Slices of that topology (multi-slice; pair with mesh.dcn_data).
  cfg.compile.programs = "train,sample"  # Which steps to compile: train, sample (comma separated).
  cfg.compile.bucket = ""  # Train-step clip FRAMESxHEIGHTxWIDTH; '' = the data bucket with most tokens.
  cfg.compile.search = False  # Rank the planner's layouts, compile the best few, print those that fit.
  cfg.compile.search_top = 3  # How many of the planner's best layouts the search compiles.

  # Open weights: a Wan 2.1 diffusers folder, local or gs:// (transformer/, vae/,
  # text_encoder/, tokenizer/). Set, the DiT/VAE/text encoder come from it instead of
  # workdir checkpoints; see configs/wan2_1_*.py and docs/open_weights.md.
  cfg.weights = ""
  # Locked: a config file (or code) setting a key that is not above fails at once (a
  # typo would otherwise add a field nothing reads). Values stay changeable.
  cfg.lock()
  return cfg
