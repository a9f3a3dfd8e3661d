# The tests import the in-tree package (python/seqmix), which loads build/libseqmix_torch.so unless
# SEQMIX_TORCH_LIB names the library.
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
