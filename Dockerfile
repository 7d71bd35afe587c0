# The image of every node (cluster.yaml's docker.image and k8s/rayjob.yaml's pods): Ray with CUDA,
# the repository at /home/ray/prefscale, prefscale installed with its pinned dependencies.
#   docker build -t REGISTRY/prefscale:0.1.0-gpu . && docker push REGISTRY/prefscale:0.1.0-gpu
FROM rayproject/ray:2.60.0-py311-gpu
WORKDIR /home/ray/prefscale
# torch first, from PyPI: its CUDA build (the range in pyproject.toml admits it), before anything that depends on it.
RUN pip install --no-cache-dir "torch==2.13.0"
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users prefscale ./prefscale
RUN pip install --no-cache-dir -e .
COPY --chown=ray:users configs ./configs
COPY --chown=ray:users ray_jobs ./ray_jobs
ENV TOKENIZERS_PARALLELISM=false
