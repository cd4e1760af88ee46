"""Video in: decoding, frame selection and the SelVA feature-extractor encoders."""
