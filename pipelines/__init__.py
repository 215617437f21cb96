"""Downstream readers of auxgen label exports (docs/format.md). None of them imports auxgen.

- torch_frozen:  a PyTorch Dataset pairing your dataset with an HDF5 export by key, and a training loop;
- wds_stream:    WebDataset shards (with images, or label-only joined to image shards by key);
- numpy_reader:  plain numpy batches from the HDF5 export (h5py only) for JAX, TensorFlow, ...;
- refresh:       targets recomputed every N epochs with the exported TorchScript generator;
- _common:       what they share: opening an HDF5 export, the view rule, PNG decoding, collate.
"""
