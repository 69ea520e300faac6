"""Datasets: the on-disk format, the IG3D-Synth generator, converters, the torch Dataset, the CLI.

Its modules (torch only in dataset.py: generating and converting data stays torch-free):
    format        the file layout and its records (docs/dataset_format.md)
    codec         records <-> JSON lines, the checked decoding being the format's validation
    reader        read_dataset: a whole directory, cross-references checked
    writer        DatasetWriter: records and pictures, streamed and checked
    splits        select_queries: "test:novel@target" and the like
    synth/        the IG3D-Synth generator and its queries (see synth/__init__.py)
    convert/      converters of Omni3D, Mono3DRefer and rosbag2 data (see convert/__init__.py)
    images        load_rgb: the one reader of a dataset's pictures
    dataset       GroundingDataset and collate_grounding for training
    contact_sheet a PNG of samples with their 3D boxes drawn
    cli           `llmi3d data ...`
"""
