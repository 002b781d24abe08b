"""dlib model import: a pure-Python reader of dlib files and PyTorch ports of dlib networks."""
