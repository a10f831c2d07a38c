# CPU image that installs the exact environment CI ran (requirements.lock) and runs the tests.
#   docker build -t lit_vision .
#   docker run --rm lit_vision                                  # python -m pytest -q
#   docker run --rm -v "$PWD/data:/app/data" -v "$PWD/tb_logs:/app/tb_logs" lit_vision \
#       python -m lit_vision fit --config configs/digits_cnn.yaml
# The default 3.11 follows 3.11's patch releases; CI's interpreter is named in requirements.lock's
# header (--build-arg PYTHON=3.11.7-slim matches it exactly).
ARG PYTHON=3.11-slim
FROM python:${PYTHON}

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLBACKEND=Agg

RUN useradd --create-home --uid 1000 app
WORKDIR /app

# 1. torch and torchvision at the lock's versions, as CPU builds from PyTorch's CPU index.
#    requirements.lock records CI's environment, where PyPI's Linux torch wheel brought the CUDA
#    runtime (nvidia-*, cuda-*, triton: several GB no CPU needs). The CPU build of the same
#    version (2.14.1+cpu satisfies `torch==2.14.1`) replaces it, and those lines are left out.
# 2. Everything else exactly as locked, --no-deps: the lock is the whole closure, so nothing is
#    resolved anew; `pip check` then proves the set is consistent.
COPY requirements.lock ./
RUN set -eux; \
    torch="$(sed -n 's/^torch==//p' requirements.lock)"; \
    vision="$(sed -n 's/^torchvision==//p' requirements.lock)"; \
    pip install --no-deps --index-url https://download.pytorch.org/whl/cpu \
        "torch==${torch}+cpu" "torchvision==${vision}+cpu"; \
    grep -vE '^(nvidia-|cuda-|triton==)' requirements.lock > /tmp/requirements-cpu.lock; \
    pip install --no-deps -r /tmp/requirements-cpu.lock; \
    rm /tmp/requirements-cpu.lock

# 3. lit_vision itself, from this checkout, without touching the locked set.
COPY --chown=app:app . .
RUN pip install --no-deps --no-build-isolation -e . && pip check && chown app:app /app

USER app
CMD ["python", "-m", "pytest", "-q"]
