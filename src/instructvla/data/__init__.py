"""Datasets: LeRobot v3.0 I/O (`lerobot`), normalisation, action chunks, augmentation, prompt formats, the stage-2
mixture, training samples (`dataset.RobotDataset`) and multimodal corpora. Submodules are imported on use so that
importing the package stays light (the collection workers import only what they need, never torch)."""
