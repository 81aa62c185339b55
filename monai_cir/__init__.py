"""monai-cir: composed vision-language retrieval of skin-cancer cases, as a MONAI plugin.

A query is a dermoscopy image plus a few words of clinical text; the answer is a ranked list of
cases from a case library, each with its diagnosis and how it was confirmed. The network follows the paper in
``../shared/paper`` (hierarchical backbone, cross-modal Transformers at three levels, global and
local alignment, ``S = beta * S_local + (1 - beta) * S_global``).

Layout (one place for each part of the architecture):

- :mod:`monai_cir.networks` -- encoders, composer, region masks, :class:`ComposedRetrievalNet`
- :mod:`monai_cir.data` -- collections (Derm7pt, ISIC UDA-1), preprocessing, report text, folds
- :mod:`monai_cir.metrics` -- mAP and Acc@K (arXiv v1 Eqs. 10-14)
- :mod:`monai_cir.index` -- the persistent case library (FAISS, Milvus)
- :mod:`monai_cir.dicom` -- DICOM in (dermoscopy + SR text) and out (similar-cases SR, PDF)
- :mod:`monai_cir.cli` -- the ``monai-cir`` command
"""

__version__ = "0.1.0"
