"""Looking inside models: t-SNE, filters, feature maps, DeconvNet, guided backprop, gradient ascent, Deep Dream, style transfer, occlusion, galleries."""
