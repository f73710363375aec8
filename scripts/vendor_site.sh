#!/usr/bin/env bash
# Unpack the vendor wheels whose argument definitions the trtllm/neuron adapters are checked
# against, WITHOUT installing them: `pip download --no-deps` + unzip into one folder that only
# the vendor tests put on PYTHONPATH (in a subprocess), so the shared environment is untouched.
#   bash scripts/vendor_site.sh [DIR]      (default ~/.cache/lmi-vendor-site; ~19 MB, pure-python + 1 binary wheel)
# then: LMI_VENDOR_SITE=DIR python3 -m pytest tests/vendors -q
# optimum-neuron 0.4.5 imports with its own pins (transformers 4.57.1, optimum 2.0.0,
# huggingface_hub < 1.0, tokenizers 0.22), which is why they come along here.
# tensorrt-llm is not here: PyPI only has a stub sdist of it (the wheel is on pypi.nvidia.com);
# its interface is the snapshot in tests/vendors/data/interfaces.json.
set -euo pipefail
DIR="${1:-$HOME/.cache/lmi-vendor-site}"
WHEELS="$DIR.wheels"
mkdir -p "$DIR" "$WHEELS"
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 -d "$WHEELS" \
  optimum-neuron==0.4.5 optimum==2.0.0 transformers==4.57.1 tokenizers==0.22.1 huggingface_hub==0.36.0 \
  nvidia-modelopt==0.47.0
# optimum-neuron's files go over optimum's (both install into the `optimum` namespace)
for wheel in optimum-2 transformers tokenizers huggingface_hub nvidia_modelopt optimum_neuron; do
  python3 -m zipfile -e "$(ls "$WHEELS"/${wheel}*.whl | head -1)" "$DIR"
done
echo "vendor site ready: $DIR ($(du -sh "$DIR" | cut -f1))"
