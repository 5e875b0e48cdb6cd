# The trainer image: torchrun + transformers training (and the base of a custom-mode image: it has
# Python, PyTorch and lepton.sdk); installs only the 'train' extra.
#   docker build -f images/trainer.Dockerfile -t lepton/trainer:0.1.0 .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[train]'

FROM python:3.11-slim
RUN useradd --uid 65532 --user-group --create-home --home-dir /home/lepton --shell /usr/sbin/nologin lepton
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels 'lepton-operator[train]' && rm -rf /wheels
# The custom-mode example (examples/trainingjob-custom.yaml runs `python examples/custom/train.py` here).
COPY --chown=65532:65532 examples/custom /home/lepton/examples/custom
USER 65532:65532
WORKDIR /home/lepton
ENV PYTHONUNBUFFERED=1 HOME=/home/lepton
ENTRYPOINT ["python", "-m", "lepton.workloads.trainer"]
