"""U-Net and SegNet segmentation of ISBI 2012 membranes: networks, data, training, overlap-tile inference, metrics."""
