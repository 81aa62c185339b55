"""Operators of the similar-cases app, one module each (MONAI Deploy style: declared named inputs/outputs).

- :class:`~.dermoscopy_loader.DermoscopyStudyLoaderOperator`: DICOM folder -> queries + problems
- :class:`~.retrieval.ComposedRetrievalOperator`: queries -> top-k similar cases (model + index loaded once)
- :class:`~.reports.SimilarCasesReportsOperator`: per query, the explanations of its matches, the
  Comprehensive SR (:mod:`.sr_writer`) and the PDF + Encapsulated PDF (:mod:`.pdf_writer`), in one pass
- :class:`~.publisher.DICOMPublisherOperator`: C-STORE / STOW-RS of the DICOM outputs (optional)
- :class:`~.results_writer.ResultsWriterOperator`: results.json + problems.json

Importing a module imports the Deploy SDK (holoscan); import them from :mod:`deploy_app.app`.
"""
