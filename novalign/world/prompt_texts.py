"""The texts :mod:`novalign.world.prompt_pool` composes prompts from (written for novalign): task templates
per attribute, domain vocabularies, difficulty scopes and constraint clauses, in English and Chinese."""

ABILITIES = {
    "Math": ["arithmetic", "algebra", "geometry"],
    "Reason": ["logic_puzzle", "commonsense"],
    "IF": ["rewriting", "format_conversion"],
    "IP": ["extraction", "summarization"],
    "FC": ["tool_call"],
    "KQA": ["fact_lookup", "concept_explanation"],
    "Role": ["persona_dialogue"],
    "Code": ["code_writing", "debugging"],
    "Creation": ["literary_writing", "practical_writing"],
}

TOPICS = {
    "IT": [("cloud servers", "云服务器"), ("database indexes", "数据库索引"), ("password security", "密码安全"),
           ("home Wi-Fi routers", "家用无线路由器"), ("smartphone apps", "手机应用"), ("open-source software", "开源软件"),
           ("network latency", "网络延迟"), ("data backups", "数据备份"), ("web browsers", "网页浏览器"),
           ("computer viruses", "电脑病毒")],
    "history": [("the Tang dynasty", "唐朝"), ("the Silk Road", "丝绸之路"), ("the Roman Empire", "罗马帝国"),
                ("the Industrial Revolution", "工业革命"), ("the Great Wall", "长城"), ("the Ming voyages of Zheng He", "郑和下西洋"),
                ("ancient Egypt", "古埃及"), ("the French Revolution", "法国大革命"), ("the Qin unification", "秦朝统一"),
                ("medieval castles", "中世纪城堡")],
    "science": [("photosynthesis", "光合作用"), ("black holes", "黑洞"), ("chemical bonds", "化学键"),
                ("plate tectonics", "板块构造"), ("DNA replication", "DNA复制"), ("the speed of light", "光速"),
                ("magnetism", "磁性"), ("the water cycle", "水循环"), ("volcanoes", "火山"), ("ocean tides", "潮汐")],
    "finance": [("compound interest", "复利"), ("stock dividends", "股票分红"), ("personal income tax", "个人所得税"),
                ("bank loans", "银行贷款"), ("inflation", "通货膨胀"), ("index funds", "指数基金"),
                ("credit card debt", "信用卡债务"), ("exchange rates", "汇率"), ("company budgets", "公司预算"),
                ("retirement savings", "养老储蓄")],
    "health": [("high blood pressure", "高血压"), ("a balanced diet", "均衡饮食"), ("sleep quality", "睡眠质量"),
               ("vaccines", "疫苗"), ("running injuries", "跑步损伤"), ("vitamin D", "维生素D"), ("diabetes", "糖尿病"),
               ("the common cold", "普通感冒"), ("dental care", "牙齿护理"), ("stress and anxiety", "压力与焦虑")],
    "daily_life": [("cooking rice", "煮米饭"), ("planning a family trip", "安排家庭旅行"), ("grocery shopping", "买菜购物"),
                   ("cleaning the kitchen", "打扫厨房"), ("raising a puppy", "养小狗"), ("moving house", "搬家"),
                   ("a birthday party", "生日聚会"), ("growing tomatoes on a balcony", "在阳台种番茄"),
                   ("commuting by bike", "骑车通勤"), ("organizing a wardrobe", "整理衣柜")],
}

FACTS = {
    "IT": [("The server cluster was upgraded to 64 cores on 3 March.", "服务器集群在3月3日升级到了64核。"),
           ("Average page load time fell from 2.1 to 0.8 seconds.", "页面平均加载时间从2.1秒降到了0.8秒。"),
           ("The team migrated the user database to PostgreSQL.", "团队把用户数据库迁移到了PostgreSQL。"),
           ("A phishing email reached 120 employees last week.", "上周有120名员工收到了钓鱼邮件。"),
           ("Nightly backups are kept for thirty days.", "每晚的备份保留三十天。"),
           ("The mobile app now supports offline mode.", "手机应用现在支持离线模式。"),
           ("Engineer Li Wei fixed the memory leak in version 2.4.", "工程师李伟在2.4版本中修复了内存泄漏。"),
           ("The office router firmware is three years old.", "办公室路由器的固件已经三年没有更新。")],
    "history": [("The Tang capital Chang'an had about a million residents.", "唐朝都城长安约有一百万居民。"),
                ("Zheng He led seven voyages between 1405 and 1433.", "郑和在1405年至1433年间七下西洋。"),
                ("The first steam engines pumped water out of mines.", "最早的蒸汽机用来抽出矿井里的水。"),
                ("Merchants carried silk and tea westward on camels.", "商人用骆驼把丝绸和茶叶运往西方。"),
                ("The Bastille was stormed on 14 July 1789.", "巴士底狱于1789年7月14日被攻占。"),
                ("Qin Shi Huang standardized weights, coins and script.", "秦始皇统一了度量衡、货币和文字。"),
                ("Many castles were built on hills for defence.", "许多城堡建在山上以便防守。"),
                ("Egyptian scribes wrote on papyrus made from reeds.", "古埃及书吏在用芦苇制成的纸莎草纸上书写。")],
    "science": [("Plants turn carbon dioxide and water into glucose using light.", "植物利用光把二氧化碳和水转化为葡萄糖。"),
                ("Light travels about 300,000 kilometres per second.", "光每秒大约传播三十万公里。"),
                ("A black hole's gravity traps even light.", "黑洞的引力连光都无法逃脱。"),
                ("Earthquakes happen where tectonic plates meet.", "地震发生在构造板块交界的地方。"),
                ("Water evaporates, condenses into clouds and falls as rain.", "水蒸发后凝结成云，再以雨的形式落下。"),
                ("The Moon's gravity causes two high tides a day.", "月球引力使每天出现两次高潮。"),
                ("Covalent bonds share electrons between atoms.", "共价键是原子之间共用电子形成的。"),
                ("The lab measured the sample at minus 40 degrees.", "实验室在零下40度测量了样品。")],
    "finance": [("The bank raised its mortgage rate to 4.2 percent.", "银行把房贷利率提高到了4.2%。"),
                ("The company paid a dividend of 0.5 yuan per share.", "公司每股派发0.5元股息。"),
                ("Inflation reached 3.1 percent in the second quarter.", "第二季度通货膨胀率达到3.1%。"),
                ("Her index fund returned 8 percent last year.", "她的指数基金去年收益8%。"),
                ("The marketing budget was cut by 15 percent.", "市场预算削减了15%。"),
                ("The credit card charges 18 percent annual interest.", "这张信用卡的年利率为18%。"),
                ("The euro fell against the dollar for five days.", "欧元对美元连续五天下跌。"),
                ("Zhang Min saves 2,000 yuan each month for retirement.", "张敏每月为养老存下2000元。")],
    "health": [("Adults need seven to nine hours of sleep a night.", "成年人每晚需要七到九个小时的睡眠。"),
               ("The patient's blood pressure was 150 over 95.", "病人的血压是150/95。"),
               ("Dr. Chen recommends two servings of vegetables per meal.", "陈医生建议每餐吃两份蔬菜。"),
               ("Flu vaccines are updated every year.", "流感疫苗每年都会更新。"),
               ("Runners often hurt their knees by increasing distance too fast.", "跑步者常因里程增加过快而伤到膝盖。"),
               ("Vitamin D is made in the skin under sunlight.", "皮肤在阳光照射下会合成维生素D。"),
               ("Brushing twice a day reduces tooth decay.", "每天刷牙两次可以减少蛀牙。"),
               ("The clinic saw 80 cases of the common cold in January.", "诊所一月份接诊了80例普通感冒。")],
    "daily_life": [("The rice cooker needs one and a half cups of water.", "电饭锅需要一杯半的水。"),
                   ("The family plans to visit the seaside for four days.", "一家人计划去海边玩四天。"),
                   ("Eggs cost 12 yuan a dozen at the market.", "市场上鸡蛋十二元一打。"),
                   ("The puppy sleeps in a basket near the door.", "小狗睡在门边的篮子里。"),
                   ("Moving boxes were delivered on Saturday morning.", "搬家用的纸箱在周六上午送到了。"),
                   ("Wang Fang baked a chocolate cake for her son's party.", "王芳为儿子的聚会烤了一个巧克力蛋糕。"),
                   ("The tomato plants need watering every evening.", "番茄苗每天傍晚都要浇水。"),
                   ("The bike ride to work takes twenty minutes.", "骑车上班要二十分钟。")],
}

NAMES = {"en": ["Alice", "Ben", "Carla", "David", "Emma", "Frank"], "zh": ["小明", "小红", "张伟", "李娜", "王强", "刘洋"]}

PERSONAS = {
    "IT": [("a senior network engineer", "一位资深网络工程师"), ("a hacker turned security consultant", "一位改行做安全顾问的黑客")],
    "history": [("a Tang dynasty poet", "一位唐朝诗人"), ("a Roman centurion", "一位罗马百夫长")],
    "science": [("a marine biologist", "一位海洋生物学家"), ("an astronaut on the space station", "一位空间站上的宇航员")],
    "finance": [("a Wall Street trader", "一位华尔街交易员"), ("a cautious bank manager", "一位谨慎的银行经理")],
    "health": [("a family doctor", "一位家庭医生"), ("a fitness coach", "一位健身教练")],
    "daily_life": [("a grandmother who loves cooking", "一位爱做饭的奶奶"), ("a cheerful travel guide", "一位开朗的导游")],
}

TOOLS = {
    "IT": ["restart_server(host)", "check_disk_usage(path)", "scan_for_malware(device_id)"],
    "history": ["search_archive(keyword, century)", "get_dynasty_timeline(dynasty)", "find_museum_item(name)"],
    "science": ["get_element_data(symbol)", "convert_units(value, from_unit, to_unit)", "lookup_planet(name)"],
    "finance": ["get_stock_price(ticker)", "convert_currency(amount, from, to)", "calculate_loan(principal, rate, years)"],
    "health": ["book_doctor(department, date)", "lookup_drug(name)", "log_blood_pressure(systolic, diastolic)"],
    "daily_life": ["find_recipe(ingredients)", "get_weather(city, date)", "book_train(from_city, to_city, date)"],
    "generic": ["send_email(to, subject, body)", "set_reminder(time, text)", "web_search(query)"],
}

FUNCTION_NAMES = {
    "IT": ["parse_log_line", "count_failed_logins", "merge_backup_lists"],
    "history": ["sort_dynasties_by_year", "count_battles_per_century", "format_emperor_name"],
    "science": ["kelvin_to_celsius", "average_reaction_time", "orbit_period"],
    "finance": ["compound_interest", "monthly_loan_payment", "portfolio_return"],
    "health": ["body_mass_index", "average_heart_rate", "count_sleep_hours"],
    "daily_life": ["split_grocery_bill", "shopping_list_total", "days_until_birthday"],
}

BUGGY_CODE = [
    "def {fn}(values):\n    total = 0\n    for i in range(1, len(values)):\n        total += values[i]\n    return total / len(values)",
    "def {fn}(a, b):\n    if a > b:\n        return a - b\n    return a - b",
    "def {fn}(items):\n    result = []\n    for x in items:\n        if x not in result:\n            result.append(x)\n    return result.sort()",
]

TASKS = {
    "arithmetic": {
        "en": ["In a note about {topic}, {name} counts {n} items that cost {m} dollars each. What is the total cost?",
               "A report on {topic} lists {n} cases in May and {m} more in June. How many cases are there altogether?",
               "{name} reads about {topic}: {n} people share {m} boxes equally. How much does each person get?"],
        "zh": ["关于{topic}的资料里，{name}数出{n}件物品，每件{m}元，一共多少钱？",
               "一份{topic}报告显示五月有{n}例，六月又多了{m}例，总共有多少例？",
               "{name}在研究{topic}时发现，{n}个人平分{m}箱东西，每人能分到多少？"]},
    "algebra": {
        "en": ["While studying {topic}, {name} finds that three times a number plus {m} equals {n}. Find the number.",
               "Solve for x in a model of {topic}: {m}x - 4 = {n}.",
               "A formula for {topic} says y = {m}x + {n}. For which x is y zero?"],
        "zh": ["{name}在学习{topic}时发现，某数的三倍加{m}等于{n}，求这个数。",
               "在{topic}的模型中，解方程 {m}x - 4 = {n}。",
               "{topic}的公式是 y = {m}x + {n}，x 取何值时 y 等于零？"]},
    "geometry": {
        "en": ["A display about {topic} is a rectangle {n} cm long and {m} cm wide. What is its area?",
               "A circular poster on {topic} has a radius of {m} metres. Find its circumference.",
               "A triangle in a diagram of {topic} has angles of {n} and {m} degrees. What is the third angle?"],
        "zh": ["一块介绍{topic}的展板是长{n}厘米、宽{m}厘米的长方形，面积是多少？",
               "一张关于{topic}的圆形海报半径为{m}米，求它的周长。",
               "{topic}示意图中的三角形有两个角分别是{n}度和{m}度，第三个角是多少度？"]},
    "logic_puzzle": {
        "en": ["Three friends discuss {topic}. {name} speaks before Ben, and Carla speaks after Ben. Who speaks last?",
               "Everyone who studies {topic} owns a notebook. {name} has no notebook. What can we conclude?",
               "Of four experts on {topic}, exactly one is lying about the date. Work out who, given their statements."],
        "zh": ["三个朋友讨论{topic}，{name}在小红之前发言，小刚在小红之后发言，谁最后发言？",
               "所有研究{topic}的人都有笔记本，{name}没有笔记本，能得出什么结论？",
               "四位{topic}专家中恰好有一人在日期上说谎，根据他们的说法推断是谁。"]},
    "commonsense": {
        "en": ["If {name} forgets everything about {topic} overnight, what would most likely happen the next day?",
               "Why would someone worried about {topic} check it again before going to bed?",
               "Is it reasonable to expect {topic} to change in one afternoon? Why or why not?"],
        "zh": ["如果{name}一夜之间忘了有关{topic}的一切，第二天最可能发生什么？",
               "一个担心{topic}的人为什么会在睡前再检查一次？",
               "指望{topic}在一个下午就发生变化合理吗？为什么？"]},
    "rewriting": {
        "en": ["Rewrite the following passage about {topic} in a friendlier voice: {text}",
               "Here is a text: {text} Paraphrase it so a child can follow it.",
               "Polish this paragraph on {topic} without changing its facts: {text}"],
        "zh": ["把下面这段关于{topic}的文字改写得更亲切：{text}",
               "这是一段文字：{text}请把它改写成小朋友也能看懂的话。",
               "在不改变事实的前提下润色这段讲{topic}的话：{text}"]},
    "format_conversion": {
        "en": ["Turn the following notes on {topic} into a table with one row per fact: {text}",
               "Convert this text into a JSON list of statements: {text}",
               "Reformat the passage below as bullet points: {text}"],
        "zh": ["把下面关于{topic}的笔记整理成表格，每条事实一行：{text}",
               "把这段文字转换成JSON格式的语句列表：{text}",
               "把下面的段落改成要点列表的形式：{text}"]},
    "extraction": {
        "en": ["From the text below, pull out every number and what it measures: {text}",
               "List the people, places and dates mentioned here: {text}",
               "Which facts about {topic} does this passage state? Extract them exactly: {text}"],
        "zh": ["从下面的文字中找出所有数字及其含义：{text}",
               "列出这段话中提到的人物、地点和日期：{text}",
               "这段话说了哪些关于{topic}的事实？请原样抽取出来：{text}"]},
    "summarization": {
        "en": ["Summarize this passage about {topic}: {text}",
               "Give me the gist of the following text: {text}",
               "What is the main point here? {text}"],
        "zh": ["概括这段关于{topic}的文字：{text}",
               "用几句话说出下面这段话的大意：{text}",
               "这段话的要点是什么？{text}"]},
    "tool_call": {
        "en": ["Available functions: {tools}. The user says: I need help with {topic}. Which call do you make, with what arguments?",
               "You can call {tools}. Pick the right function for a question about {topic} and fill in its parameters.",
               "Tools: {tools}. Respond with the function call that answers: what should I do about {topic}?"],
        "zh": ["可用函数：{tools}。用户说：我需要处理{topic}的事。你会调用哪个函数，参数是什么？",
               "你可以调用 {tools}。为一个关于{topic}的问题选出合适的函数并填好参数。",
               "工具列表：{tools}。请给出回答这个问题的函数调用：关于{topic}我该怎么办？"]},
    "fact_lookup": {
        "en": ["When did people first learn about {topic}?", "Who is best known for work on {topic}?",
               "Where is {topic} most often discussed, and by whom?"],
        "zh": ["人们最早是什么时候了解{topic}的？", "谁在{topic}方面最有名？", "{topic}最常在哪里被讨论，由谁讨论？"]},
    "concept_explanation": {
        "en": ["How does {topic} work?", "Why does {topic} matter, and what is it exactly?",
               "What is the difference between {topic} and {topic2}?"],
        "zh": ["{topic}是怎么回事？", "{topic}到底是什么，为什么重要？", "{topic}和{topic2}有什么区别？"]},
    "persona_dialogue": {
        "en": ["You are {persona}. Stay in character and tell me what you think about {topic}.",
               "Pretend to be {persona} and answer a visitor who asks about {topic}.",
               "Play the role of {persona}; greet me and chat about {topic}."],
        "zh": ["你现在是{persona}。请保持角色，说说你对{topic}的看法。",
               "假装你是{persona}，回答一位访客关于{topic}的提问。",
               "扮演{persona}，跟我打个招呼，然后聊聊{topic}。"]},
    "code_writing": {
        "en": ["Write a Python function for a tool about {topic} that takes a list of records and returns a summary.",
               "Implement a program that helps with {topic}: read input lines and print the totals.",
               "Code a class that models {topic} with methods to add, remove and list entries."],
        "zh": ["写一个处理{topic}数据的Python函数，输入记录列表，返回汇总结果。",
               "实现一个帮助处理{topic}的程序：读取输入的每一行并输出合计。",
               "编写一个表示{topic}的类，提供添加、删除和列出条目的方法。"]},
    "debugging": {
        "en": ["This function for {topic} gives the wrong result. Find the bug and fix it:\n{code}",
               "Why does this code crash or misbehave?\n{code}",
               "Review the code below, used in a project on {topic}, and correct its error:\n{code}"],
        "zh": ["这个处理{topic}的函数结果不对，找出错误并修正：\n{code}",
               "这段代码为什么会出错？\n{code}",
               "检查下面这段用于{topic}项目的代码，并改正其中的错误：\n{code}"]},
    "literary_writing": {
        "en": ["Write a short story in which {name} discovers something surprising about {topic}.",
               "Compose a poem inspired by {topic}.", "Write a personal essay that begins with a memory of {topic}."],
        "zh": ["写一个短篇故事，讲{name}发现了关于{topic}的意外秘密。", "以{topic}为灵感写一首诗。",
               "写一篇以{topic}的回忆开头的散文。"]},
    "practical_writing": {
        "en": ["Draft an email to my manager about {topic}.", "Write a notice for residents explaining {topic}.",
               "Prepare an advertisement for a product related to {topic}."],
        "zh": ["给我的经理写一封关于{topic}的邮件。", "写一份通知，向居民说明{topic}的情况。",
               "为一款与{topic}有关的产品写一则广告。"]},
}

DIFFICULTY = {
    "easy": {"en": ["Just a quick answer is fine.", "Keep it basic.", "", "This is for a beginner."],
             "zh": ["简单回答就行。", "说个大概就好。", "", "这是给初学者的。"]},
    "intermediate": {
        "en": ["Explain your steps one by one.", "Compare two ways of doing it and say which is better.",
               "Show the working and check the result.", "Walk through it step by step, giving a reason for each step."],
        "zh": ["请一步一步说明你的过程。", "比较两种做法，并说明哪种更好。", "写出推导过程并验算结果。",
               "逐步讲解，每一步都说明理由。"]},
    "difficult": {
        "en": ["Give a rigorous justification, handle every edge case and discuss the trade-offs for an expert reader.",
               "Generalize the problem, prove your answer holds in all cases, and analyse where it fails.",
               "Treat this at research depth: derive it from first principles, weigh competing approaches and quantify the uncertainty.",
               "Consider the hidden assumptions, counterexamples and the worst case, then defend your conclusion."],
        "zh": ["请给出严格的论证，处理所有边界情况，并为专业读者讨论其中的权衡。",
               "把问题推广到一般情形，证明结论在所有情况下成立，并分析它何时失效。",
               "按研究水平来处理：从基本原理推导，权衡不同方法，并量化不确定性。",
               "考虑隐含假设、反例和最坏情况，然后为你的结论辩护。"]},
}

CONSTRAINTS = {
    "length": {"en": ["use no more than {n} words", "keep it under {n} words", "write at least {n} words"],
               "zh": ["不超过{n}个字", "字数控制在{n}字以内", "至少写{n}个字"]},
    "format": {"en": ["format the answer as a numbered list", "answer in Markdown with two headings",
                      "return valid JSON only"],
               "zh": ["用编号列表的形式回答", "用Markdown格式并包含两个小标题", "只返回合法的JSON"]},
    "keyword": {"en": ["include the word \"{kw}\"", "mention \"{kw}\" at least twice", "never use the word \"{kw}\""],
                "zh": ["必须包含“{kw}”这个词", "至少提到两次“{kw}”", "不要出现“{kw}”这个词"]},
    "tone": {"en": ["use a formal tone", "sound humorous", "write in a calm, neutral voice"],
             "zh": ["语气要正式", "写得幽默一些", "用平静客观的语气"]},
    "ending": {"en": ["end with a question to the reader", "finish with the sentence \"That is all.\"",
                      "close with a one-line summary"],
               "zh": ["最后以一个反问句结尾", "以“以上就是全部内容。”结尾", "最后用一句话总结"]},
    "audience": {"en": ["address it to teenagers", "assume the reader is a busy executive", "write for non-native speakers"],
                 "zh": ["面向青少年读者", "假设读者是很忙的高管", "写给中文不是母语的人看"]},
}

KEYWORDS = {"en": ["balance", "future", "simple", "careful", "together"], "zh": ["平衡", "未来", "简单", "仔细", "一起"]}
ONE_CONSTRAINT = {"en": ["Please {c}.", "Note: {c}.", "One requirement: {c}."],
                  "zh": ["请{c}。", "注意：{c}。", "要求：{c}。"]}
LIST_HEAD = {"en": ["Requirements:", "Follow all of these rules:", "Your answer must:"],
             "zh": ["要求如下：", "请遵守以下所有规则：", "回答必须满足："]}
INLINE_HEAD = {"en": ["Make sure to {c}.", "You must {c}.", "Rules: {c}."],
               "zh": ["请务必{c}。", "必须做到：{c}。", "规则：{c}。"]}

CODE_ONLY = {
    "code_writing": {
        "python": ["def {fn}(records):\n    \"\"\"{topic}: {hint}\"\"\"\n    # TODO: implement. {cons}\n    pass",
                   "# {topic} helper -- {hint}\n# {cons}\nclass {fn}:\n    def __init__(self):\n        ...\n"],
        "cpp": ["// {topic}: {hint}\n// {cons}\nint {fn}(const std::vector<int>& v) {{\n    // TODO\n}}",
                "#include <vector>\n/* {topic} -- {hint} {cons} */\nstd::vector<int> {fn}(std::vector<int> xs);"]},
    "debugging": {
        "python": ["def {fn}(xs):\n    # {topic}; FIXME: wrong for empty input. {hint}\n    return sum(xs) / len(xs)\n# {cons}",
                   "# {topic}: this raises IndexError -- {hint}\ndef {fn}(xs):\n    return xs[len(xs)]\n# {cons}"],
        "cpp": ["// {topic}: off-by-one here? {hint}\n// {cons}\nfor (int i = 0; i <= n; ++i) {{ total += a[i]; }}",
                "// {topic} -- segfault in {fn}. {hint} {cons}\nint* p = nullptr;\n*p = 42;"]},
}
CODE_DIFFICULTY = {"easy": ["simple version is enough", "basic case only"],
                   "intermediate": ["explain each step of the fix", "compare two approaches"],
                   "difficult": ["must be thread-safe and handle every edge case, O(n log n) worst case",
                                 "prove correctness and discuss the trade-offs"]}
CODE_CONSTRAINTS = {"unconstrained": [""], "simple": ["Keep it under 20 lines."],
                    "strong": ["Requirements: under 20 lines; no external libraries; add type hints; include a test."]}
