# The server image: the inference HTTP server; installs only the 'serve' extra.
#   docker build -f images/server.Dockerfile -t lepton/server:0.1.0 .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[serve]'

FROM python:3.11-slim
RUN useradd --uid 65532 --user-group --create-home --home-dir /home/lepton --shell /usr/sbin/nologin lepton
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels 'lepton-operator[serve]' && rm -rf /wheels
USER 65532:65532
WORKDIR /home/lepton
ENV PYTHONUNBUFFERED=1 HOME=/home/lepton
ENTRYPOINT ["python", "-m", "lepton.workloads.server"]
