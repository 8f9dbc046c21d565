# make data: downloads the canonical dataset files into DATA_DIR and verifies their checksums.
# Offline, it says what to download where. DATA_DIR=../shared/data uses an existing copy instead.
data:
	bash pipelines/fetch-data.sh $(DATA_DIR)
