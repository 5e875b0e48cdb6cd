# The operator: kopf + prometheus-client, no ML frameworks.
#   docker build -f images/operator.Dockerfile -t lepton/operator:0.1.0 .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[operator]'

FROM python:3.11-slim
RUN useradd --uid 65532 --user-group --no-create-home --shell /usr/sbin/nologin lepton
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels 'lepton-operator[operator]' && rm -rf /wheels
USER 65532:65532
ENV PYTHONUNBUFFERED=1
EXPOSE 8080
ENTRYPOINT ["leptonctl"]
CMD ["operator"]
