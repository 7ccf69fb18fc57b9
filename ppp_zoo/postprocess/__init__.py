"""PatchPerPix instance assembly: per-pixel shape patches in, instances out.

This sub-package is standalone: it imports numpy, numba and scipy only, never torch and
nothing else of ``ppp_zoo``, so a consumer of an exported model can run it on the raw
model outputs.

Input layout (identical to the exported model's outputs, batch axis dropped)
---------------------------------------------------------------------------
``numinst``  (3, [Z,] Y, X)  probabilities of 0, 1, 2+ instances at each pixel (or ``None``).
``patches``  (P, [Z,] Y, X)  P = prod(patchshape); channel ``k`` holds, at centre pixel ``c``,
the probability that pixel ``c + o_k`` belongs to the same instance as ``c``, where
``o_k = unravel_index(k, patchshape) - patchshape // 2`` (C order). Every patchshape entry
is odd; ``r = patchshape // 2`` is the patch radius.

The steps, with the exact definitions this implementation computes
------------------------------------------------------------------
Let TH = ``patch_threshold`` and BG = 1 - TH if TH >= 0.5 else TH. ``P_c(u)`` is the value of
the patch centred at ``c`` at pixel ``u`` (``u`` in ``box(c) = c + [-r, r]``, inside the image).

0. Foreground class: 2 if numinst[2] > t2, else 1 if numinst[1] > t1, else 0
   (``numinst_thresholds = (t1, t2)``). Without numinst: 1 where ``P_x(x) > TH``.
   ``fg`` = class >= 1; voting pixels ``V`` = class == 1 (overlap pixels have no patch).
   Candidate centres: ``V`` (fast mode: only those whose coordinates are all multiples
   of ``fast_stride``, the grid; in fast mode every step below takes only pixels on the
   grid into H_c and L_c, so steps 1-2 and 5 are the exact assembly of the image and the
   patches subsampled by the stride).
1. Consensus. For every candidate centre c: ``H_c = {u in box(c) & V : P_c(u) > TH}``,
   ``L_c = {v in box(c) & V : P_c(v) < BG}``. For every unordered pair {u, v}, u != v:
   both in H_c: vote ``(P_c(u) P_c(v) - TH^2) / (1 - TH^2)``;
   u in H_c, v in L_c: vote ``-(P_c(u) (1 - P_c(v)) - TH^2) / (1 - TH^2)``.
   ``C(u, v)`` = mean of the votes it received; undefined when it received none.
2. Patch score of candidate c: mean over the unordered pairs {u, v} with both in H_c
   (term ``+C``) or one in H_c and the other in L_c (term ``-C``), counting only pairs with
   a defined C; -1 when there is none. Ranking: score (rounded to 5 decimals, so that
   scores equal up to float32 rounding tie) descending, ties by the larger ``|H_c|``, then by a fixed pseudo-random order of the pixels (the splitmix64 hash of the
   flat index; raster order would select runs of near-identical neighbours).
3. Foreground cover: walk the ranking; select c when ``{u in box(c) & fg : P_c(u) > fc_threshold}``
   holds a pixel not yet covered, then mark that region covered.
   Fast mode walks it twice: first counting only the region's pixels on the grid; then,
   with the regions of the patches selected so far marked, the patches not yet selected
   select themselves for the pixels still uncovered. The selection keeps the rank order.
4. Patch graph: nodes = selected patches (selection order); candidate edges = pairs whose
   centres differ by at most ``4 r`` on every axis (farther patches share no pair).
5. Edge weight(a, b) = mean of the defined ``C(u, v)``, u in H_a, v in H_b, u != v; a pair
   of patches with no defined C gets no edge.
6. Partition: ``"cc"`` - connected components over edges with weight > 0;
   ``"mws"`` - mutex watershed: edges by |weight| descending (ties by node pair), positive
   edges merge two clusters unless a mutex separates them, negative edges add a mutex.
   Components are numbered 1..K by their best-ranked patch.
7. Labelling: every selected patch paints ``{u in box(c) : P_c(u) > TH}`` (cropped to ``fg``
   when ``crop_to_fg``) with its component id, worst-ranked first so better patches win.
   Overlapping mode: one mask per component, the union of its patches' regions, so
   overlap pixels belong to every instance covering them. Instances with fewer than
   ``min_size`` pixels are removed and ids are made consecutive.

Exported models: :func:`load_model_params` reads every parameter and the per-pixel
decoding (the network's patch head, and the code decoder of ``ppp+dec`` models, see
:mod:`.decode`) from a model package written by ``ppp-zoo export``; ``params.split`` and
``params.patches`` turn the model's single output into numinst and patches
(``candidates_only=True``: only the patches the assembly reads, as a compact
:class:`CandidatePatches`).

Large images: :func:`assemble_blockwise` assembles blocks with a margin of two patch sizes
and stitches them (memory grows with the block, not with the image).

GPU: ``assemble(..., device="cuda")`` (or ``"auto"``, the default, when numba finds a usable
CUDA GPU and the CUDA kernels passed a self-check there, see
:func:`~ppp_zoo.postprocess.assembly.cuda_self_check`) runs the kernels of steps 1-5
(consensus, scores, cover, edges and their weights) with numba's CUDA target, with the CPU
kernels' results; step 0, the ranking's sort and steps 6-7 stay on the CPU (see
``_cuda_kernels.py``). ``AssemblyResult.device`` says where the kernels really ran.
"""

from ._cache import configure as _configure_cache

_configure_cache()

from .assembly import AssemblyResult, assemble  # noqa: E402
from .blockwise import assemble_blockwise  # noqa: E402
from .candidates import CandidatePatches  # noqa: E402
from .decode import (  # noqa: E402
    DecodedPatches,
    Decoder,
    PatchHead,
    decode,
    decode_candidates,
    load_decoder,
)
from .errors import PostprocessError  # noqa: E402
from .model_package import (  # noqa: E402
    ModelParams,
    PackageError,
    PackageFiles,
    load_model_params,
)
from .params import AssemblyParams, Partition, parse_shape  # noqa: E402

__all__ = ["AssemblyParams", "AssemblyResult", "CandidatePatches", "DecodedPatches", "Decoder",
           "ModelParams", "PackageError", "PackageFiles", "Partition", "PatchHead",
           "PostprocessError", "assemble",
           "assemble_blockwise", "decode", "decode_candidates", "load_decoder",
           "load_model_params", "parse_shape"]
