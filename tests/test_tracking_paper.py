"""The paper's Tables 2-5 as data: cells checked by hand against the paper text."""

from msreid.tracking.paper import load_paper_tables, paper_value


def test_cell_counts_per_table():
    cells = load_paper_tables()
    count = {}
    for table, *_ in cells:
        count[table] = count.get(table, 0) + 1
    # Table 2: 4 rows x 5 backbones; Table 3: 7 x 5; Tables 4, 5: 4 rows x 2 datasets.
    assert count == {"table2": 20, "table3": 35, "table4": 8, "table5": 8}


def test_hand_checked_cells():
    # Read off the paper's tables by hand, one cell per table and corner:
    # Table 2, RGB one-stream, ResNet50: 49.5 72.6 76.4 78.6
    assert load_paper_tables()[("table2", "rgbn300", "ResNet50", "RGB one-stream")] == {
        "mAP": 49.5, "R1": 72.6, "R5": 76.4, "R10": 78.6}
    # Table 2, RGB-N HAMNet, MobileNetV2 (last cell): 56.9 80.0 82.1 83.5
    assert load_paper_tables()[("table2", "rgbn300", "MobileNetV2", "RGB-N HAMNet")] == {
        "mAP": 56.9, "R1": 80.0, "R5": 82.1, "R10": 83.5}
    # Table 3, TIR one-stream, InceptionResNetV3: 40.5 70.8 75.3 78.2
    assert load_paper_tables()[("table3", "rgbnt100", "InceptionResNetV3", "TIR one-stream")] == {
        "mAP": 40.5, "R1": 70.8, "R5": 75.3, "R10": 78.2}
    # Table 3, RGB-N-T HAMNet, SeResNet50: 65.4 85.5 87.9 88.8
    assert paper_value(("table3", "rgbnt100", "SeResNet50", "RGB-N-T HAMNet"), "R10") == 88.8
    # Table 3, RGB-T MSN, Densenet121: mAP 45.9, R-1 73.8
    assert paper_value(("table3", "rgbnt100", "Densenet121", "RGB-T MSN"), "R1") == 73.8
    # Table 4: MGN on RGBNT100 58.1 / 83.1; ABD on RGBN300 58.9 / 83.1
    assert paper_value(("table4", "rgbnt100", "ResNet50", "MGN (MM2018)"), "mAP") == 58.1
    assert paper_value(("table4", "rgbn300", "ResNet50", "ABD (ICCV2019)"), "R1") == 83.1
    # Table 5: + L_caid: RGBN300 59.4 / 79.2, RGBNT100 61.4 / 83.1
    assert paper_value(("table5", "rgbn300", "ResNet50", "+ L_caid"), "mAP") == 59.4
    assert paper_value(("table5", "rgbnt100", "ResNet50", "+ L_caid"), "R1") == 83.1
    assert paper_value(("table5", "rgbnt100", "ResNet50", "+ L_hsc"), "R5") is None


def test_tables_agree_where_the_paper_repeats_itself():
    # The paper reuses cells: Table 5's baseline = ResNet50 MSN of Tables 2/3, its full
    # model = ResNet50 HAMNet, and Table 4's OURS = the same HAMNet cells.
    p = load_paper_tables()
    for ds, t, msn, ham in (("rgbn300", "table2", "RGB-N MSN", "RGB-N HAMNet"),
                            ("rgbnt100", "table3", "RGB-N-T MSN", "RGB-N-T HAMNet")):
        for m in ("mAP", "R1"):
            assert p[("table5", ds, "ResNet50", "baseline (MSN)")][m] == p[(t, ds, "ResNet50", msn)][m]
            assert p[("table5", ds, "ResNet50", "+ L_hsc + L_caid")][m] == p[(t, ds, "ResNet50", ham)][m]
            assert p[("table4", ds, "ResNet50", "OURS")][m] == p[(t, ds, "ResNet50", ham)][m]


def test_cmc_is_monotone_in_every_published_cell():
    for key, cell in load_paper_tables().items():
        ranks = [cell[m] for m in ("R1", "R5", "R10") if m in cell]
        assert ranks == sorted(ranks), key
        assert all(0 < v <= 100 for v in cell.values()), key
